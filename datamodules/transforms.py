"""Image preprocessing and augmentation in PIL/numpy (no torchvision), driven by a given RNG."""

from __future__ import annotations

import random

import numpy as np
from PIL import Image

from prompts.templates import FAR_AWAY_WORDS, ZOOMED_IN_WORDS


def random_rescale(
    image: Image.Image, resolution: int, rng: random.Random
) -> tuple[Image.Image, np.ndarray, str]:
    """Custom Diffusion's augmentation: shrink onto a blank canvas or zoom and crop.

    With probability 0.66 the subject is shrunk to a side in [res/3, res] and pasted at a random
    place (loss only where it lies); otherwise it is enlarged to 1.2-1.4x and randomly cropped.
    Returns the image, the valid-region mask (H, W) and the prompt prefix that says which.
    """
    if rng.random() < 0.66:
        side = rng.randint(resolution // 3, resolution)
    else:
        side = rng.randint(int(1.2 * resolution), int(1.4 * resolution))
    side = min(side + side % 2, resolution) if side <= resolution else side + side % 2
    scaled = image.resize((side, side), Image.Resampling.BICUBIC)
    mask = np.zeros((resolution, resolution), dtype=np.float32)
    if side > resolution:
        left, top = rng.randint(0, side - resolution), rng.randint(0, side - resolution)
        canvas = scaled.crop((left, top, left + resolution, top + resolution))
        mask[:] = 1.0
    else:
        left, top = rng.randint(0, resolution - side), rng.randint(0, resolution - side)
        canvas = Image.new("RGB", (resolution, resolution), (127, 127, 127))
        canvas.paste(scaled, (left, top))
        mask[top : top + side, left : left + side] = 1.0
    if side < 0.6 * resolution:
        prefix = rng.choice(FAR_AWAY_WORDS)
    elif side > resolution:
        prefix = rng.choice(ZOOMED_IN_WORDS)
    else:
        prefix = ""
    return canvas, mask, prefix
