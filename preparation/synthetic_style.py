"""Synthetic styles: procedural palettes and strokes, for the tests and the laptop run.

No style references ship with the project (StyleBench's images cannot be downloaded here), so a
style concept without images gets one of these, as a subject gets the synthetic toy. A style is
what stays the same across images whose content changes: each style fixes a palette (a
background and three ink colours) and a stroke (straight hatching, dots, waves or blocks, with
their own width and density); each image draws different content (circles, a house, a tree,
mountains, chosen and placed by the image's seed) with that stroke and palette. Pure Pillow +
numpy, deterministic by (style, seed).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from PIL import Image, ImageDraw


@dataclass(frozen=True)
class SyntheticStyle:
    """A palette and a stroke: what every image in the style shares."""

    name: str
    background: tuple[int, int, int]
    inks: tuple[tuple[int, int, int], ...]
    stroke: str  # hatch | dots | waves | blocks
    width: int  # stroke width in a 256-px image
    spacing: int  # distance between strokes in a 256-px image


STYLES = (
    SyntheticStyle("ember-hatch", (245, 232, 205), ((190, 45, 30), (90, 30, 20), (235, 150, 40)),
                   "hatch", 3, 7),
    SyntheticStyle("ocean-dots", (18, 30, 60), ((90, 200, 230), (230, 240, 250), (40, 120, 200)),
                   "dots", 5, 12),
    SyntheticStyle("moss-waves", (220, 235, 210), ((40, 110, 60), (150, 180, 60), (20, 60, 40)),
                   "waves", 2, 9),
    SyntheticStyle("neon-blocks", (15, 15, 15), ((250, 40, 160), (40, 250, 200), (250, 240, 40)),
                   "blocks", 10, 22),
)  # fmt: skip
SUPERSAMPLE = 2


def _shapes(rng: random.Random, side: int) -> list[tuple[str, tuple[float, ...]]]:
    """The image's content: 2-4 shapes, kind and placement from the image's seed."""
    kinds = ["disc", "house", "tree", "mountain"]
    shapes = []
    for _ in range(rng.randint(2, 4)):
        kind = rng.choice(kinds)
        cx, cy = rng.uniform(0.2, 0.8) * side, rng.uniform(0.3, 0.8) * side
        size = rng.uniform(0.15, 0.35) * side
        shapes.append((kind, (cx, cy, size)))
    return shapes


def _polygon(kind: str, cx: float, cy: float, size: float) -> list[tuple[float, float]]:
    if kind == "disc":
        return [
            (cx + size * math.cos(a), cy + size * math.sin(a))
            for a in (2 * math.pi * k / 24 for k in range(24))
        ]
    if kind == "house":
        return [(cx - size, cy + size), (cx - size, cy), (cx, cy - size),
                (cx + size, cy), (cx + size, cy + size)]  # fmt: skip
    if kind == "tree":
        return [(cx, cy - size * 1.2), (cx + size * 0.7, cy + size * 0.6),
                (cx - size * 0.7, cy + size * 0.6)]  # fmt: skip
    return [(cx - size * 1.5, cy + size), (cx, cy - size), (cx + size * 1.5, cy + size)]


def _fill_with_strokes(
    canvas: Image.Image, mask: Image.Image, style: SyntheticStyle, ink: tuple[int, int, int],
    rng: random.Random,
) -> None:
    """Paint ``ink`` strokes of the style over the whole canvas, kept where ``mask`` is set."""
    side = canvas.width
    scale = side / 256
    layer = Image.new("RGB", canvas.size, style.background)
    draw = ImageDraw.Draw(layer)
    width, spacing = max(1, round(style.width * scale)), max(2, round(style.spacing * scale))
    jitter = rng.uniform(0, spacing)
    if style.stroke == "hatch":
        for x in range(-side, side, spacing):
            draw.line([(x + jitter, 0), (x + jitter + side, side)], fill=ink, width=width)
    elif style.stroke == "dots":
        for y in range(0, side, spacing):
            for x in range((y // spacing % 2) * spacing // 2, side, spacing):
                r = width
                draw.ellipse([x - r, y - r, x + r, y + r], fill=ink)
    elif style.stroke == "waves":
        for y in range(0, side + spacing, spacing):
            points = [(x, y + spacing * 0.4 * math.sin((x + jitter) / (6 * scale)))
                      for x in range(0, side + 1, max(1, side // 64))]  # fmt: skip
            draw.line(points, fill=ink, width=width)
    else:  # blocks
        for y in range(0, side, spacing):
            for x in range(0, side, spacing):
                if rng.random() < 0.7:
                    draw.rectangle([x, y, x + spacing - width // 2, y + spacing - width // 2],
                                   fill=ink)  # fmt: skip
    canvas.paste(layer, (0, 0), mask)


def draw_style_image(style: SyntheticStyle, resolution: int, seed: int) -> Image.Image:
    """One image of new content in ``style``."""
    rng = random.Random(seed)
    side = resolution * SUPERSAMPLE
    canvas = Image.new("RGB", (side, side), style.background)
    for index, (kind, (cx, cy, size)) in enumerate(_shapes(rng, side)):
        mask = Image.new("L", (side, side), 0)
        ImageDraw.Draw(mask).polygon(_polygon(kind, cx, cy, size), fill=255)
        _fill_with_strokes(canvas, mask, style, style.inks[index % len(style.inks)], rng)
    return canvas.resize((resolution, resolution), Image.Resampling.LANCZOS)


def draw_synthetic_style(
    count: int = 5, resolution: int = 64, seed: int = 0, style: int = 0
) -> list[Image.Image]:
    """``count`` images in synthetic style number ``style`` (of `STYLES`), content by seed."""
    chosen = STYLES[style % len(STYLES)]
    return [draw_style_image(chosen, resolution, seed * 1000 + i) for i in range(count)]
