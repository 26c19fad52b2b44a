"""Keep the images of a face dataset that show exactly one face (ACCORD's FFHQ filtering).

ACCORD evaluated zero-shot personalization (IP-Adapter, Table 4) on FFHQ images in which
insightface found exactly one face. `filter_single_faces` walks a folder (FFHQ's layout or any
image folder, nested or not), runs a detector on every image and sorts each into kept or
dropped with its reason: ``no face``, ``<n> faces`` or ``unreadable: <why>``. The detector is
insightface's SCRFD from a local model pack when one is given, else scikit-image's cascade
(`metrics.faces`), so the filtering runs offline. ``scripts/prepare_faces.py`` is the command.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.atomic import swap_in, write_file_atomically
from metrics.faces import FaceDetector
from preparation.photos import IMAGE_SUFFIXES, load_rgb_image

KEPT_FILE = "kept.txt"  # one path per line, relative to the input folder
KEPT_IMAGES = "images"  # links to the kept images: a folder to train on
DROPPED_FILE = "dropped.tsv"  # path <TAB> reason
SUMMARY_FILE = "faces.json"  # counts, detector settings, timing


@dataclass
class FaceFilterResult:
    """Which images show exactly one face, and why each other one was dropped."""

    folder: Path
    kept: list[str] = field(default_factory=list)
    dropped: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return len(self.kept) + len(self.dropped)

    def images_per_second(self) -> float:
        return self.total / self.seconds if self.seconds > 0 else float("inf")

    def reason_counts(self) -> dict[str, int]:
        """``no face`` / ``several faces`` / ``unreadable`` -> how many images."""
        counts = {"no face": 0, "several faces": 0, "unreadable": 0}
        for reason in self.dropped.values():
            kind = "unreadable" if reason.startswith("unreadable") else reason
            counts[kind if kind in counts else "several faces"] += 1
        return counts


def list_images(folder: str | Path) -> list[Path]:
    """Every image file under ``folder`` (subfolders too: FFHQ's 00000/, 01000/, ...), sorted."""
    root = Path(folder)
    if not root.is_dir():
        what = "is a file" if root.is_file() else "does not exist"
        raise FileNotFoundError(
            f"face image folder {str(root)!r} {what}; give the folder that holds the images "
            "(FFHQ's images1024x1024 or any folder of photos, nested folders are searched)."
        )
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(
            f"face image folder {str(root)!r} holds no images ({', '.join(IMAGE_SUFFIXES)}), "
            "not even in subfolders; point it at the dataset's image folder."
        )
    return files


def face_count_reason(count: int) -> str | None:
    """None for exactly one face, else why the image is dropped."""
    if count == 1:
        return None
    return "no face" if count == 0 else f"{count} faces"


def filter_single_faces(
    folder: str | Path,
    detector: FaceDetector,
    progress: Callable[[int, int], None] | None = None,
) -> FaceFilterResult:
    """Detect faces in every image under ``folder``; keep those with exactly one.

    An image that cannot be read is dropped as ``unreadable`` (with the reader's message), not
    an error: one broken file in 70,000 should not stop the filtering.
    """
    files = list_images(folder)
    result = FaceFilterResult(Path(folder))
    start = time.perf_counter()
    for index, file in enumerate(files, 1):
        name = file.relative_to(result.folder).as_posix()
        try:
            image = np.asarray(load_rgb_image(file))
        except ValueError as error:
            result.dropped[name] = f"unreadable: {' '.join(str(error).split())}"
        else:
            reason = face_count_reason(len(detector.detect(image)))
            if reason is None:
                result.kept.append(name)
            else:
                result.dropped[name] = reason
        if progress is not None:
            progress(index, len(files))
    result.seconds = time.perf_counter() - start
    return result


def write_face_lists(
    result: FaceFilterResult, output: str | Path, detector: dict[str, Any]
) -> Path:
    """``kept.txt``, ``dropped.tsv``, ``faces.json`` and ``images/`` (a link to each kept image,
    nested paths flattened with ``__``: the folder ``data.init_args.instance_data_dir`` trains
    on) into ``output``; returns the folder."""
    folder = Path(output)
    staging = folder / f".{KEPT_IMAGES}.partial-{os.getpid()}"
    staging.mkdir(parents=True, exist_ok=True)
    for name in result.kept:
        source = (Path(result.folder) / name).resolve()
        (staging / name.replace("/", "__")).symlink_to(source)
    swap_in(staging, folder / KEPT_IMAGES)
    kept = "".join(f"{name}\n" for name in result.kept)
    dropped = "".join(f"{name}\t{reason}\n" for name, reason in result.dropped.items())
    summary = {
        "folder": str(result.folder),
        "images": result.total,
        "kept": len(result.kept),
        "dropped": result.reason_counts(),
        "rule": "exactly one detected face (ACCORD's FFHQ filtering)",
        "detector": detector,
        "seconds": round(result.seconds, 3),
        "images_per_second": round(result.images_per_second(), 3),
    }
    write_file_atomically(folder / KEPT_FILE, lambda f: f.write(kept.encode()))
    write_file_atomically(folder / DROPPED_FILE, lambda f: f.write(dropped.encode()))
    text = json.dumps(summary, indent=2) + "\n"
    write_file_atomically(folder / SUMMARY_FILE, lambda f: f.write(text.encode()))
    return folder


def prepare_face_folder(
    folder: str | Path,
    output: str | Path,
    detector: FaceDetector,
    progress: Callable[[int, int], None] | None = None,
) -> FaceFilterResult:
    """Filter ``folder`` and write the lists; none kept is a ValueError (after writing the
    reasons, so the user can read why)."""
    result = filter_single_faces(folder, detector, progress)
    write_face_lists(result, output, detector.definition())
    if not result.kept:
        counts = ", ".join(f"{n} {kind}" for kind, n in result.reason_counts().items() if n)
        raise ValueError(
            f"no image in {str(folder)!r} shows exactly one face ({result.total} images: "
            f"{counts}; reasons in {Path(output) / DROPPED_FILE}); give a folder of face "
            "photos, or insightface's detector (--insightface-root) if faces are missed."
        )
    return result
