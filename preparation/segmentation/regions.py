"""R-Aug's regions of a concept, and the weight-free way to find them: superpixels inside the
concept's mask, each named by where it lies ("the upper left part of <v1> dog").

A region is a named part ("the hat of <v1> man") only when a detector found that part (the
``sam`` backend, `preparation.segmentation.sam`); otherwise its label is its place in the
concept's bounding box, never a made-up part name. scikit-image's SLIC clusters the masked
pixels by colour and position into compact regions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
from PIL import Image
from skimage.segmentation import slic

MIN_SHARE = 0.03  # regions under this share of the concept are merged noise, not parts
MAX_SHARE = 0.8  # a "part" over this share of the concept is the concept itself
VERTICAL = ("upper", "middle", "lower")
HORIZONTAL = ("left", "central", "right")


@dataclass(frozen=True)
class Region:
    """A piece of the concept and what the prompt calls it."""

    mask: np.ndarray  # (H, W) bool, inside the concept's mask
    label: str  # a place ("upper left", "middle") or, when `named`, a part ("hat")
    named: bool = False  # a detected part, not a place

    def prompt(self, phrase: str) -> str:
        """A part reads "the hat of <v1> man", a place "the upper part of <v1> man"."""
        return (
            f"the {self.label} of {phrase}" if self.named else f"the {self.label} part of {phrase}"
        )


class RegionFinder(Protocol):
    """R-Aug's two questions about one photo and its concept mask (H, W bool)."""

    def find_parts(
        self, image: Image.Image, concept: np.ndarray, part_names: list[str]
    ) -> list[Region]: ...

    def regions(
        self, image: Image.Image, concept: np.ndarray, num_regions: int
    ) -> list[Region]: ...


def position_of(region: np.ndarray, concept: np.ndarray) -> str:
    """The region's centroid in thirds of the concept's bounding box: "upper left", ...,
    "middle" for the centre third both ways."""
    rows, cols = np.nonzero(concept)
    top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    r, c = np.nonzero(region)
    vertical = VERTICAL[min(2, int(3 * (r.mean() - top) / max(1, bottom - top)))]
    horizontal = HORIZONTAL[min(2, int(3 * (c.mean() - left) / max(1, right - left)))]
    if horizontal == "central":
        return vertical
    return horizontal if vertical == "middle" else f"{vertical} {horizontal}"


def over_segment(image: np.ndarray, concept: np.ndarray, num_regions: int = 6) -> list[Region]:
    """About `num_regions` compact regions of the concept (RGB uint8 `image`, bool mask),
    largest first; regions under MIN_SHARE of the concept are dropped."""
    # Copies: SLIC's Cython code refuses read-only buffers, as np.asarray(a PIL image) is.
    image, concept = np.array(image), np.array(concept, bool)
    labels = slic(image, n_segments=num_regions, compactness=10.0, mask=concept,
                  start_label=1, channel_axis=-1)  # fmt: skip
    total = concept.sum()
    regions = [labels == k for k in range(1, labels.max() + 1)]
    regions = [m for m in regions if m.sum() >= MIN_SHARE * total]
    regions.sort(key=lambda m: -int(m.sum()))
    return [Region(m, position_of(m, concept)) for m in regions]


class SuperpixelRegions:
    """The weight-free `RegionFinder`: no part detector, so no named parts; SLIC places."""

    def find_parts(
        self, image: Image.Image, concept: np.ndarray, part_names: list[str]
    ) -> list[Region]:
        return []

    def regions(self, image: Image.Image, concept: np.ndarray, num_regions: int) -> list[Region]:
        return over_segment(np.asarray(image.convert("RGB")), concept, num_regions)
