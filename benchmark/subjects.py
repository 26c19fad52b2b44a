"""Benchmark subjects: a folder of photos and its class word."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from core.dreambench import DREAMBENCH_SUBJECTS
from preparation.photos import list_image_files


@dataclass(frozen=True)
class Subject:
    """One subject: its name (the run folder), photo folder and class word."""

    name: str
    folder: Path
    class_word: str


def parse_subject(spec: str) -> Subject:
    """``FOLDER:CLASS`` or ``FOLDER:CLASS:NAME`` (name defaults to the folder's name)."""
    parts = spec.split(":")
    if len(parts) not in (2, 3) or not all(parts):
        raise ValueError(
            f"Subject {spec!r} must be FOLDER:CLASS_WORD (or FOLDER:CLASS_WORD:NAME), e.g. "
            "../shared/data/dreambench/dog:dog."
        )
    folder = Path(parts[0])
    list_image_files(folder)  # a missing or empty folder fails now, before anything trains
    return Subject(parts[2] if len(parts) == 3 else folder.name, folder, parts[1])


def dreambench_class_words(root: Path) -> dict[str, str]:
    """Subject -> class word from DreamBench's prompts_and_classes.txt (built-in list if absent)."""
    listing = root / "prompts_and_classes.txt"
    if not listing.is_file():
        return dict(DREAMBENCH_SUBJECTS)
    classes: dict[str, str] = {}
    for line in listing.read_text().split("Prompts")[0].splitlines():  # the class table
        name, _, word = line.partition(",")
        if word and name != "subject_name" and (root / name).is_dir():
            classes[name.strip()] = word.strip()
    return classes


def dreambench_subjects(root: str | Path, names: list[str] | None = None) -> list[Subject]:
    """DreamBench's subjects under `root` (all 30, or `names`), with their class words."""
    root = Path(root)
    classes = dreambench_class_words(root)
    unknown = sorted(set(names or []) - set(classes))
    if unknown:
        raise ValueError(f"{unknown} are not DreamBench subjects under {str(root)!r}.")
    subjects = []
    for name in names or sorted(classes):
        list_image_files(root / name)
        subjects.append(Subject(name, root / name, classes[name]))
    return subjects
