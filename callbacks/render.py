"""Turn analysis results into images: matplotlib figures (Agg, no pyplot) and heat overlays."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import font_manager
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageFont


def figure_to_array(figure: Figure) -> np.ndarray:
    """Render a figure off-screen to an (H, W, 3) uint8 array.

    The Agg canvas is created directly, so neither pyplot's global state nor the session's
    backend is touched (training may run headless or inside a notebook).
    """
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


@lru_cache(maxsize=8)
def _label_font(pixels: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """matplotlib's default sans-serif at a pixel size, for PIL (its bitmap font if absent)."""
    try:
        return ImageFont.truetype(font_manager.findfont("DejaVu Sans"), pixels)
    except OSError:
        return ImageFont.load_default()


@dataclass(frozen=True)
class PointLabels:
    """Texts to write beside points given in an axes' data coordinates, in one style."""

    points: np.ndarray  # (N, 2)
    texts: Sequence[str]
    colour: tuple[int, int, int] = (115, 115, 115)
    fontsize: float = 6.0  # points, as matplotlib's


def figure_to_array_with_labels(
    figure: Figure, axes: Axes, labels: Sequence[PointLabels], offset_points: float = 2.0
) -> np.ndarray:
    """`figure_to_array`, then point labels written with PIL.

    Equivalent to ``axes.annotate(text, point, xytext=(2, 2), textcoords="offset points")``
    for each point, at a fraction of the cost: matplotlib's text artists (~70 labels, a
    legend) take most of a scatter figure's drawing time.
    """
    canvas = (
        figure.canvas if isinstance(figure.canvas, FigureCanvasAgg) else FigureCanvasAgg(figure)
    )
    canvas.draw()
    image = Image.fromarray(np.asarray(canvas.buffer_rgba())[..., :3])
    height = image.height
    scale = figure.dpi / 72.0
    offset = offset_points * scale
    draw = ImageDraw.Draw(image)
    for group in labels:
        font = _label_font(max(1, round(group.fontsize * scale)))
        for (x, y), text in zip(axes.transData.transform(np.asarray(group.points)), group.texts):
            # Display y runs upwards; the text's bottom-left sits offset right of and above
            # the point.
            position = (x + offset, height - y - offset)
            draw.text(position, text, fill=group.colour, font=font, anchor="ld")
    return np.asarray(image).copy()


def heatmap_overlay(
    image: torch.Tensor,
    heat: torch.Tensor,
    limits: tuple[float, float] | None = None,
    alpha: float = 0.5,
    size: int | None = None,
) -> torch.Tensor:
    """Blend a colour-mapped heat map over a greyscale copy of an image; (3, H, W) in [0, 1]
    and (h, w) in, (3, size, size) out.

    ``limits`` (low, high) span the colour map (None: the map's own min..max); limits shared
    by several maps keep a weaker one looking weaker. The map is upsampled bilinearly;
    ``size`` enlarges small (tiny-model) images for viewing. Greyscale, so the image's own
    colours cannot be mistaken for heat.
    """
    size = size or image.shape[-1]
    base = F.interpolate(image[None].float().cpu(), size=(size, size), mode="nearest")[0]
    grey = (0.299 * base[0] + 0.587 * base[1] + 0.114 * base[2]).expand(3, -1, -1)
    heat = heat.float().cpu()
    low, high = limits if limits is not None else (float(heat.min()), float(heat.max()))
    heat = (heat - low) / max(high - low, 1e-12)
    heat = F.interpolate(heat[None, None], size=(size, size), mode="bilinear")[0, 0]
    colours = matplotlib.colormaps["jet"](heat.clamp(0, 1).numpy())[..., :3]
    colours = torch.from_numpy(colours).permute(2, 0, 1).float()
    return ((1 - alpha) * grey + alpha * colours).clamp(0, 1)


def labelled_grid(
    rows: list[list[tuple[str, torch.Tensor]]], row_titles: list[str], padding: int = 4
) -> np.ndarray:
    """Panels (title, (3, S, S) image in [0, 1]) in rows, each row under its title, each
    panel under its own; drawn with PIL (matplotlib subplots would cost ~10x as long)."""
    side = rows[0][0][1].shape[-1]
    line = 12  # PIL's default bitmap font is ~11 px high
    columns = max(len(row) for row in rows)
    row_height = 2 * line + side + padding
    canvas = Image.new(
        "RGB", (columns * (side + padding) + padding, len(rows) * row_height + padding), "white"
    )
    draw = ImageDraw.Draw(canvas)
    for r, (row, title) in enumerate(zip(rows, row_titles)):
        top = padding + r * row_height
        draw.text((padding, top), title, fill="black")
        for c, (name, panel) in enumerate(row):
            left = padding + c * (side + padding)
            draw.text((left, top + line), name, fill="black")
            pixels = (panel.permute(1, 2, 0).clamp(0, 1).numpy() * 255).round().astype(np.uint8)
            canvas.paste(Image.fromarray(pixels), (left, top + 2 * line))
    return np.asarray(canvas)
