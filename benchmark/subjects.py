"""Benchmark subjects: a folder of photos and its class word (or a style: its reference
images, class word ``style``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from core.concept import CONCEPT_KINDS, STYLE_CLASS_WORD
from core.dreambench import DREAMBENCH_SUBJECTS
from preparation.photos import list_image_files


@dataclass(frozen=True)
class Subject:
    """One subject: its name (the run folder), photo folder, class word and concept kind
    (None: a subject, as its class word says; ``style`` for a style's reference images)."""

    name: str
    folder: Path
    class_word: str
    kind: str | None = None

    @property
    def spec(self) -> str:
        """``FOLDER:CLASS:NAME[:KIND]``, what `parse_subject` reads back."""
        kind = f":{self.kind}" if self.kind else ""
        return f"{self.folder.resolve()}:{self.class_word}:{self.name}{kind}"


def parse_subject(spec: str) -> Subject:
    """``FOLDER:CLASS``, ``FOLDER:CLASS:NAME`` or ``FOLDER:CLASS:NAME:KIND`` (name defaults to
    the folder's name; kind one of object, living, style)."""
    parts = spec.split(":")
    if len(parts) not in (2, 3, 4) or not all(parts):
        raise ValueError(
            f"Subject {spec!r} must be FOLDER:CLASS_WORD (or FOLDER:CLASS_WORD:NAME[:KIND]), "
            "e.g. ../shared/data/dreambench/dog:dog."
        )
    folder = Path(parts[0])
    kind = parts[3] if len(parts) == 4 else None
    if kind is not None and kind not in CONCEPT_KINDS:
        raise ValueError(f"Subject {spec!r}: kind {kind!r} is not one of {list(CONCEPT_KINDS)}.")
    list_image_files(folder)  # a missing or empty folder fails now, before anything trains
    return Subject(parts[2] if len(parts) >= 3 else folder.name, folder, parts[1], kind)


def stylebench_subjects(root: str | Path) -> list[Subject]:
    """Every style of a StyleBench-layout folder (one folder of reference images per style,
    named by the style) as a style subject."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"StyleBench folder {str(root)!r} does not exist.")
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    if not folders:
        raise ValueError(
            f"{str(root)!r} holds no style folders; StyleBench's layout is one folder of "
            "reference images per style."
        )
    subjects = []
    for folder in folders:
        list_image_files(folder)
        subjects.append(Subject(folder.name, folder, STYLE_CLASS_WORD, "style"))
    return subjects


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
