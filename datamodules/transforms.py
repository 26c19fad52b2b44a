"""Image preprocessing and augmentation in PIL/numpy (no torchvision), driven by a given RNG."""

from __future__ import annotations

import random

import numpy as np
import torch
from PIL import Image

from datamodules.prompts import FAR_AWAY_WORDS, ZOOMED_IN_WORDS


def to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB image -> float tensor (3, H, W) in [-1, 1], as the VAE expects."""
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def resize_and_crop(
    image: Image.Image, resolution: int, random_crop: bool, rng: random.Random
) -> Image.Image:
    """Resize the shorter side to `resolution`, then crop a square (centre or random)."""
    width, height = image.size
    scale = resolution / min(width, height)
    size = (max(resolution, round(width * scale)), max(resolution, round(height * scale)))
    image = image.resize(size, Image.Resampling.BICUBIC)
    spare_x, spare_y = size[0] - resolution, size[1] - resolution
    left = rng.randint(0, spare_x) if random_crop else spare_x // 2
    top = rng.randint(0, spare_y) if random_crop else spare_y // 2
    return image.crop((left, top, left + resolution, top + resolution))


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
