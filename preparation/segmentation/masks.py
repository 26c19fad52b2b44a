"""User masks: a folder with one mask per photo, named like it (``00.jpg`` -> ``00.png``).

A mask is drawn on its photo, so it should have the photo's size. One of another size but the
same aspect ratio (drawn on a copy made smaller) is resized with a warning; one of another
aspect ratio belongs to another crop or photo, and stretching it would put the concept in the
wrong place, so it is refused.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from preparation.photos import list_image_files
from preparation.segmentation.base import check_foreground

ASPECT_TOLERANCE = 0.01  # relative; beyond a pixel's rounding, another aspect ratio


def same_aspect(mask_size: tuple[int, int], photo_size: tuple[int, int]) -> bool:
    """Whether (W, H) `mask_size` is `photo_size` scaled: aspect ratios within
    ASPECT_TOLERANCE, or (a small mask cannot match a ratio more closely) some scale of the
    photo that rounds to the mask, each side within half a pixel."""
    (mask_w, mask_h), (photo_w, photo_h) = mask_size, photo_size
    if abs(mask_w * photo_h / (mask_h * photo_w) - 1) <= ASPECT_TOLERANCE:
        return True
    low = max((mask_w - 0.5) / photo_w, (mask_h - 0.5) / photo_h)
    return low <= min((mask_w + 0.5) / photo_w, (mask_h + 0.5) / photo_h)


def _size(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


class MaskFolder:
    """Masks by photo stem; white (> 127) is the concept. The photo names are given up
    front, so a folder that does not match them fails before anything is built."""

    def __init__(self, folder: str | Path, photo_names: list[str]) -> None:
        self.folder = Path(folder)
        files = {f.stem: f for f in list_image_files(self.folder)}
        stems = [Path(name).stem for name in photo_names]
        missing = [s for s in stems if s not in files]
        if missing:
            raise FileNotFoundError(
                f"mask folder {self.folder} has no mask for photo(s) {missing[:5]} (it holds "
                f"{sorted(files)[:5]}...); name each mask like its photo, e.g. {missing[0]}.png."
            )
        self.files = {s: files[s] for s in stems}

    def mask_for(
        self, photo_name: str, size: tuple[int, int], photo_size: tuple[int, int] | None = None
    ) -> np.ndarray:
        """The photo's mask at `size` (W, H), checked against `photo_size`, the photo's own
        (W, H) as loaded (None: `size` is it): another size warns, another aspect ratio is a
        ValueError, both naming the mask file and the two sizes."""
        file = self.files[Path(photo_name).stem]
        photo = photo_size or size
        with Image.open(file) as opened:
            image = ImageOps.exif_transpose(opened)  # as its photo is read (instance_images)
            if image.size != photo:
                self._check_size(file, image.size, photo_name, photo)
            gray = image.convert("L").resize(size, Image.Resampling.NEAREST)
        return check_foreground(np.asarray(gray) > 127, str(file))

    @staticmethod
    def _check_size(
        file: Path, mask_size: tuple[int, int], photo_name: str, photo_size: tuple[int, int]
    ) -> None:
        sizes = f"mask {file} is {_size(mask_size)} px, its photo {photo_name} {_size(photo_size)}"
        if not same_aspect(mask_size, photo_size):
            raise ValueError(
                f"{sizes}: another aspect ratio, so the mask does not fit the photo; give a "
                f"mask of the photo's size ({_size(photo_size)} px), drawn on the photo itself."
            )
        # stacklevel 1: one place, so the same warning is said once however often it is read.
        warnings.warn(f"{sizes}; the mask is resized to the photo (same aspect ratio).",
                      stacklevel=1)  # fmt: skip
