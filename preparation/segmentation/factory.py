"""Segmentation backends and R-Aug region finders by name, for configs.

``fallback`` needs nothing (GrabCut masks, SLIC regions by place); ``masks`` reads a folder of
masks named like the photos, so it is built with the folder and the photo names and answers
by name (`MaskFolder.mask_for`), its regions being superpixels; ``sam`` loads SAM (and
Grounding-DINO) and finds named parts too. SAM's modules import only when it is chosen.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from preparation.segmentation.base import Segmenter
from preparation.segmentation.masks import MaskFolder
from preparation.segmentation.regions import RegionFinder, SuperpixelRegions

BACKENDS = ("fallback", "masks", "sam")


def _check(name: str) -> None:
    if name not in BACKENDS:
        raise ValueError(f"Unknown segmentation backend {name!r}; choose one of {list(BACKENDS)}.")


def build_segmenter(name: str, **options: Any) -> Segmenter | MaskFolder:
    """The foreground backend `name`.

    Options: ``masks`` takes ``folder`` and ``photo_names`` (checked now: every photo needs
    its mask); ``sam`` takes `SamSegmenter`'s (sam_model, grounding_model, ...);
    ``fallback`` takes none.
    """
    _check(name)
    if name == "masks":
        if set(options) != {"folder", "photo_names"}:
            raise ValueError(
                "the masks backend takes folder= and photo_names= (the photos' file names); "
                f"got {sorted(options)}."
            )
        folder: str | Path = options["folder"]
        return MaskFolder(folder, list(options["photo_names"]))
    if name == "sam":
        from preparation.segmentation.sam import SamSegmenter

        return SamSegmenter(**options)
    if options:
        raise ValueError(f"the fallback backend takes no options, got {sorted(options)}.")
    from preparation.segmentation.fallback import GrabCutSegmenter

    return GrabCutSegmenter()


def build_region_finder(name: str, **options: Any) -> RegionFinder:
    """R-Aug's regions for backend `name`: ``sam`` finds named parts and SAM pieces (options
    as for its segmenter; the models are shared, not loaded twice); the others superpixels
    by place and no named parts (options ignored)."""
    _check(name)
    if name == "sam":
        from preparation.segmentation.sam import SamSegmenter

        return SamSegmenter(**options)
    return SuperpixelRegions()
