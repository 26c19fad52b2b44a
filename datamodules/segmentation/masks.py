"""User masks: a folder with one mask per photo, named like it (``00.jpg`` -> ``00.png``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from datamodules.instance_images import list_image_files
from datamodules.segmentation.base import check_foreground


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

    def mask_for(self, photo_name: str, size: tuple[int, int]) -> np.ndarray:
        """The photo's mask at `size` (W, H), checked."""
        file = self.files[Path(photo_name).stem]
        with Image.open(file) as image:
            gray = image.convert("L").resize(size, Image.Resampling.NEAREST)
        return check_foreground(np.asarray(gray) > 127, str(file))
