"""A segmented concept as a pasteable cut-out, and pasting one into a box of a canvas."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Cutout:
    """The concept's pixels (RGBA, alpha = its mask) cropped to the mask, and its phrase in
    prompts ("<v1> dog")."""

    image: Image.Image
    phrase: str


def make_cutout(photo: Image.Image, mask: np.ndarray, phrase: str) -> Cutout:
    """`photo` with `mask` (H, W bool) as alpha, cropped to the mask's bounding box."""
    rgba = photo.convert("RGB").convert("RGBA")
    if mask.shape != (rgba.height, rgba.width):
        raise ValueError(f"mask {mask.shape} does not match the photo {rgba.size[::-1]}.")
    rgba.putalpha(Image.fromarray(mask.astype(np.uint8) * 255))
    box = rgba.getchannel("A").getbbox()
    if box is None:
        raise ValueError(f"the mask of {phrase!r} is empty; nothing to cut out.")
    return Cutout(rgba.crop(box), phrase)


def paste_into(canvas: Image.Image, cutout: Cutout, box: tuple[int, int, int, int]) -> np.ndarray:
    """Paste `cutout` as large as fits `box` (x0, y0, x1, y1), centred in it, keeping its
    aspect; returns where it landed on the canvas, (H, W) bool."""
    x0, y0, x1, y1 = box
    scale = min((x1 - x0) / cutout.image.width, (y1 - y0) / cutout.image.height)
    size = (max(1, round(cutout.image.width * scale)), max(1, round(cutout.image.height * scale)))
    piece = cutout.image.resize(size, Image.Resampling.LANCZOS)
    left, top = x0 + (x1 - x0 - size[0]) // 2, y0 + (y1 - y0 - size[1]) // 2
    canvas.paste(piece, (left, top), piece)
    placed = np.zeros((canvas.height, canvas.width), bool)
    alpha = np.asarray(piece.getchannel("A")) >= 128
    placed[top : top + size[1], left : left + size[0]] = alpha
    return placed
