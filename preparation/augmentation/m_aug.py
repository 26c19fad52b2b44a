"""M-Aug (CLIF 4.2): two segmented concepts side by side, the prompt naming both in order.

Each concept fills its half at a random scale and height; the background is a flat colour, so
nothing but the two concepts is there to name. The prompt says left first, then right.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
from PIL import Image

from preparation.augmentation.cutout import Cutout, paste_into

BACKGROUNDS = ((236, 234, 228), (214, 220, 226), (226, 216, 204), (200, 206, 196))
SCALE_RANGE = (0.55, 0.95)  # of the half's width and of the height


@dataclass(frozen=True)
class MultiConceptSample:
    image: Image.Image
    prompt: str
    masks: tuple[np.ndarray, np.ndarray]  # where the left and the right concept landed


def side_by_side(left: Cutout, right: Cutout, size: int, rng: random.Random) -> MultiConceptSample:
    """One M-Aug image of `size` px: `left` in the left half, `right` in the right half."""
    canvas = Image.new("RGB", (size, size), rng.choice(BACKGROUNDS))
    half = size // 2
    masks = []
    for cutout, x_start in ((left, 0), (right, half)):
        scale = rng.uniform(*SCALE_RANGE)
        width, height = round(half * scale), round(size * scale)
        x0 = x_start + rng.randint(0, half - width)
        y0 = rng.randint(0, size - height)
        masks.append(paste_into(canvas, cutout, (x0, y0, x0 + width, y0 + height)))
    prompt = f"a photo of a {left.phrase} and a {right.phrase}"
    return MultiConceptSample(canvas, prompt, (masks[0], masks[1]))
