"""Image preprocessing and augmentation in PIL/numpy (no torchvision), driven by a given RNG."""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
from PIL import Image

from prompts.templates import FAR_AWAY_WORDS, ZOOMED_IN_WORDS


@dataclass(frozen=True)
class Rescale:
    """One draw of Custom Diffusion's rescale: the subject's new side and where it lies (on
    the canvas when shrunk; the crop's corner in the enlarged image when zoomed in)."""

    side: int
    left: int
    top: int
    prefix: str


def draw_rescale(resolution: int, rng: random.Random) -> Rescale:
    """Custom Diffusion's augmentation, drawn: with probability 0.66 the subject is shrunk to a
    side in [res/3, res] and pasted at a random place; otherwise enlarged to 1.2-1.4x and
    randomly cropped. The prompt prefix says which ("a far away", "zoomed in")."""
    if rng.random() < 0.66:
        side = rng.randint(resolution // 3, resolution)
    else:
        side = rng.randint(int(1.2 * resolution), int(1.4 * resolution))
    side = min(side + side % 2, resolution) if side <= resolution else side + side % 2
    room = abs(side - resolution)
    left, top = rng.randint(0, room), rng.randint(0, room)
    if side < 0.6 * resolution:
        prefix = rng.choice(FAR_AWAY_WORDS)
    elif side > resolution:
        prefix = rng.choice(ZOOMED_IN_WORDS)
    else:
        prefix = ""
    return Rescale(side, left, top, prefix)


def apply_rescale(
    image: Image.Image, resolution: int, rescale: Rescale, fill: int | tuple[int, ...]
) -> tuple[Image.Image, np.ndarray]:
    """The drawn rescale applied to ``image`` (a photo, or its subject mask with fill 0): the
    image and the valid-region mask (H, W) (loss only where the subject lies)."""
    side, left, top = rescale.side, rescale.left, rescale.top
    resample = Image.Resampling.NEAREST if image.mode == "L" else Image.Resampling.BICUBIC
    scaled = image.resize((side, side), resample)
    mask = np.zeros((resolution, resolution), dtype=np.float32)
    if side > resolution:
        canvas = scaled.crop((left, top, left + resolution, top + resolution))
        mask[:] = 1.0
    else:
        canvas = Image.new(image.mode, (resolution, resolution), fill)
        canvas.paste(scaled, (left, top))
        mask[top : top + side, left : left + side] = 1.0
    return canvas, mask


def random_rescale(
    image: Image.Image, resolution: int, rng: random.Random
) -> tuple[Image.Image, np.ndarray, str]:
    """`draw_rescale` then `apply_rescale` on a photo (grey canvas): the image, the
    valid-region mask and the prompt prefix."""
    rescale = draw_rescale(resolution, rng)
    canvas, mask = apply_rescale(image, resolution, rescale, (127, 127, 127))
    return canvas, mask, rescale.prefix


@dataclass(frozen=True)
class PhotoTransform:
    """How one training image came from its photo: the photo scaled to ``scaled_size``
    (W, H), cropped at ``crop`` (left, top), maybe flipped, maybe rescaled; replayed on the
    photo's subject mask (`transformed_like`)."""

    scaled_size: tuple[int, int]
    crop: tuple[int, int]
    flipped: bool
    rescale: Rescale | None
    crop_size: tuple[int, int] | None = None  # (width, height); None: the square resolution


def transformed_like(mask: Image.Image, transform: PhotoTransform, resolution: int) -> np.ndarray:
    """A photo-sized mask (mode L) through the same scaling, crop, flip and rescale as the
    training image: (height, width) floats in [0, 1]."""
    scaled = mask.resize(transform.scaled_size, Image.Resampling.NEAREST)
    left, top = transform.crop
    width, height = transform.crop_size or (resolution, resolution)
    image = scaled.crop((left, top, left + width, top + height))
    if transform.flipped:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if transform.rescale is not None:
        image, _ = apply_rescale(image, resolution, transform.rescale, 0)
    return np.asarray(image, dtype=np.float32) / 255.0
