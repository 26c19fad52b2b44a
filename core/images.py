"""Image helpers that data, generation and callbacks share (PIL/numpy/torch, no torchvision)."""

from __future__ import annotations

import math
import random

import numpy as np
import torch
from PIL import Image


def to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB image -> float tensor (3, H, W) in [-1, 1], as the VAE expects."""
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def resize_and_crop(
    image: Image.Image, resolution: int, random_crop: bool, rng: random.Random
) -> Image.Image:
    """Resize the shorter side to `resolution`, then crop a square (centre or random)."""
    return crop_square(resize_short_side(image, resolution), resolution, random_crop, rng)


def resize_short_side(image: Image.Image, resolution: int) -> Image.Image:
    """The image scaled (bicubic) so that its shorter side is `resolution` pixels."""
    width, height = image.size
    scale = resolution / min(width, height)
    size = (max(resolution, round(width * scale)), max(resolution, round(height * scale)))
    return image.resize(size, Image.Resampling.BICUBIC)


def resize_to_cover(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """The image scaled (bicubic, aspect kept) so that it covers a (width, height) crop."""
    scale = max(size[0] / image.width, size[1] / image.height)
    scaled = (max(size[0], round(image.width * scale)), max(size[1], round(image.height * scale)))
    return image.resize(scaled, Image.Resampling.BICUBIC)


def crop_square(
    image: Image.Image, resolution: int, random_crop: bool, rng: random.Random
) -> Image.Image:
    """A `resolution` square of an image whose shorter side is already `resolution`."""
    left, top = crop_origin(image.size, resolution, random_crop, rng)
    return image.crop((left, top, left + resolution, top + resolution))


def crop_origin(
    size: tuple[int, int],
    resolution: int | tuple[int, int],
    random_crop: bool,
    rng: random.Random,
) -> tuple[int, int]:
    """(left, top) of `crop_square`'s square (or a (width, height) crop) in an image of
    ``size`` (its draws, in order)."""
    width, height = (resolution, resolution) if isinstance(resolution, int) else resolution
    spare_x, spare_y = size[0] - width, size[1] - height
    left = rng.randint(0, spare_x) if random_crop else spare_x // 2
    top = rng.randint(0, spare_y) if random_crop else spare_y // 2
    return left, top


def make_grid(images: torch.Tensor, columns: int | None = None, padding: int = 2) -> torch.Tensor:
    """(B, C, H, W) in [0, 1] -> (C, rows*(H+p)+p, cols*(W+p)+p), white padding."""
    count, channels, height, width = images.shape
    columns = columns or math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    grid = torch.ones(
        channels, rows * (height + padding) + padding, columns * (width + padding) + padding
    )
    for index in range(count):
        row, column = divmod(index, columns)
        top, left = padding + row * (height + padding), padding + column * (width + padding)
        grid[:, top : top + height, left : left + width] = images[index].float().cpu()
    return grid


def cover_crop(pixels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, C, h, w) images scaled (bicubic, aspect kept) to cover (height, width), centre
    cropped to it: class images of an aspect bucket's shape."""
    height, width = size
    scale = max(height / pixels.shape[-2], width / pixels.shape[-1])
    scaled_h = max(height, round(pixels.shape[-2] * scale))
    scaled_w = max(width, round(pixels.shape[-1] * scale))
    scaled = torch.nn.functional.interpolate(
        pixels, size=(scaled_h, scaled_w), mode="bicubic", align_corners=False
    ).clamp(-1, 1)
    top, left = (scaled_h - height) // 2, (scaled_w - width) // 2
    return scaled[..., top : top + height, left : left + width]
