"""Arrange a batch of images into one grid tensor (TensorBoard shows one image per tag)."""

from __future__ import annotations

import math

import torch


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
