"""R-Aug (CLIF 4.1): one region of the concept alone on a plain background, with its label.

The region's pixels are cut out of the photo (alpha = the region's mask) and shown at a
random scale in the middle of a flat canvas, so the prompt ("the ear of <v1> dog", "the upper
part of <v1> dog") names everything in the image.
"""

from __future__ import annotations

import random

import numpy as np
from PIL import Image

from preparation.augmentation.cutout import make_cutout, paste_into
from preparation.augmentation.m_aug import BACKGROUNDS

SCALE_RANGE = (0.6, 0.95)  # of the canvas side


def region_image(
    photo: Image.Image, region: np.ndarray, size: int, rng: random.Random
) -> tuple[Image.Image, np.ndarray]:
    """The region (H, W bool mask of `photo`) on a flat `size` px canvas; (image, its mask)."""
    cutout = make_cutout(photo, region, "region")
    canvas = Image.new("RGB", (size, size), rng.choice(BACKGROUNDS))
    side = round(size * rng.uniform(*SCALE_RANGE))
    x0, y0 = rng.randint(0, size - side), rng.randint(0, size - side)
    return canvas, paste_into(canvas, cutout, (x0, y0, x0 + side, y0 + side))
