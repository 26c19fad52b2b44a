"""Over-segmentation for R-Aug without weights: superpixels inside the concept's mask, each
named by where it lies ("the upper left part of <v1> dog").

scikit-image's SLIC clusters the masked pixels by colour and position into compact regions.
Without a part detector nothing says a region is a hat or an ear, so the label is only its
place in the concept's bounding box: never a made-up part name.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from skimage.segmentation import slic

MIN_SHARE = 0.03  # regions under this share of the concept are merged noise, not parts
VERTICAL = ("upper", "middle", "lower")
HORIZONTAL = ("left", "central", "right")


@dataclass(frozen=True)
class Region:
    mask: np.ndarray  # (H, W) bool, inside the concept's mask
    position: str  # "upper left", "middle", ...

    def prompt(self, phrase: str) -> str:
        return f"the {self.position} part of {phrase}"


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
    labels = slic(image, n_segments=num_regions, compactness=10.0, mask=concept,
                  start_label=1, channel_axis=-1)  # fmt: skip
    total = concept.sum()
    regions = [labels == k for k in range(1, labels.max() + 1)]
    regions = [m for m in regions if m.sum() >= MIN_SHARE * total]
    regions.sort(key=lambda m: -int(m.sum()))
    return [Region(m, position_of(m, concept)) for m in regions]
