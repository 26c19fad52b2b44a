"""Synthetic personalization concept: one toy robot drawn in many poses.

No photos ship with the project, so the quickstart needs a subject to learn that
can be generated on the spot.  ``draw_synthetic_concept`` paints the *same*
distinctive toy (fixed shapes and colours) in every image while its pose
(rotation, scale, position, mirroring) and the background vary, which is what a
personalization method needs: one consistent identity, many appearances.

Everything is pure Pillow + numpy, deterministic by seed, and drawn at a
supersampled size before a LANCZOS downsample so edges stay clean.
"""

from __future__ import annotations

import random

import numpy as np
from PIL import Image, ImageDraw

BODY_COLOR = (235, 110, 20)  # signature orange: tests look for it in every image
STRIPE_COLOR = (30, 40, 110)  # navy stripes, arms and feet
HEAD_COLOR = (30, 170, 160)  # teal head
BULB_COLOR = (220, 40, 140)  # magenta antenna bulb
EYE_COLOR, PUPIL_COLOR = (250, 250, 245), (20, 20, 25)

SUPERSAMPLE = 4  # draw at 4x, downsample with LANCZOS for anti-aliased edges
# Muted, desaturated colours so the bold toy always stands out from the scene.
MUTED_PALETTE = [
    (196, 205, 214), (171, 186, 196), (207, 201, 186), (184, 196, 176),
    (214, 208, 200), (160, 170, 185), (190, 182, 196), (176, 190, 190),
    (224, 220, 210), (150, 160, 160), (200, 190, 175), (165, 180, 170),
]


def _lerp(a: tuple[int, ...], b: tuple[int, ...], t: float) -> tuple[int, ...]:
    return tuple(int(round(x + (y - x) * t)) for x, y in zip(a, b))


def _draw_toy_robot(side: int) -> Image.Image:
    """The toy on a transparent square canvas; a 100x100 design grid scaled to `side`.

    Fixed geometry and colours give the concept its identity; the pupils look to
    one side so horizontal mirroring is actually visible.
    """
    toy = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    draw = ImageDraw.Draw(toy)
    u = side / 100.0

    def box(x0: float, y0: float, x1: float, y1: float) -> list[float]:
        return [x0 * u, y0 * u, x1 * u, y1 * u]

    draw.line(box(50, 20, 50, 8), fill=STRIPE_COLOR, width=max(1, round(3 * u)))
    draw.ellipse(box(43, 1, 57, 15), fill=BULB_COLOR)
    draw.rounded_rectangle(box(10, 52, 20, 74), radius=4 * u, fill=STRIPE_COLOR)  # arms
    draw.rounded_rectangle(box(80, 52, 90, 74), radius=4 * u, fill=STRIPE_COLOR)
    draw.ellipse(box(23, 82, 45, 98), fill=STRIPE_COLOR)  # feet
    draw.ellipse(box(55, 82, 77, 98), fill=STRIPE_COLOR)
    draw.rounded_rectangle(box(20, 44, 80, 88), radius=10 * u, fill=BODY_COLOR)
    for y0 in (56, 64, 72):  # stripes stay on the straight part of the body
        draw.rectangle(box(20, y0, 80, y0 + 4), fill=STRIPE_COLOR)
    draw.rounded_rectangle(box(27, 17, 73, 45), radius=8 * u, fill=HEAD_COLOR)
    for x0 in (33, 53):
        draw.ellipse(box(x0, 22, x0 + 14, 36), fill=EYE_COLOR)
        draw.ellipse(box(x0 + 7, 26, x0 + 13, 32), fill=PUPIL_COLOR)
    draw.rectangle(box(42, 39, 58, 41), fill=PUPIL_COLOR)  # mouth
    return toy


def _draw_background(size: int, rng: random.Random) -> Image.Image:
    """Soft two-colour gradient, a darker floor and a few faint shapes."""
    top, bottom = rng.sample(MUTED_PALETTE, 2)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1)
    t = ys if rng.random() < 0.5 else (xs + ys) / 2.0  # vertical or diagonal
    grad = np.array(top, np.float32) + (np.array(bottom, np.float32) - top) * t[..., None]
    floor_y = int(size * rng.uniform(0.65, 0.85))
    grad[floor_y:] *= rng.uniform(0.78, 0.9)  # floor is a shade darker than the wall
    scene = Image.fromarray(grad.round().astype(np.uint8), "RGB").convert("RGBA")

    overlay = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    for _ in range(rng.randint(2, 4)):
        colour = rng.choice(MUTED_PALETTE) + (rng.randint(50, 100),)
        r = size * rng.uniform(0.05, 0.15)
        cx, cy = rng.uniform(0, size), rng.uniform(0, floor_y)
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape([cx - r, cy - r, cx + r, cy + r], fill=colour)
    edge = _lerp(bottom, (60, 60, 60), 0.5) + (255,)
    draw.line([0, floor_y, size, floor_y], fill=edge, width=max(1, size // 100))
    return Image.alpha_composite(scene, overlay)


def _draw_one_image(index: int, resolution: int, seed: int) -> Image.Image:
    """Image `index` of the concept; its RNG depends only on (seed, index)."""
    return _draw_one_scene(index, resolution, seed)[0]


def _draw_one_scene(index: int, resolution: int, seed: int) -> tuple[Image.Image, Image.Image]:
    """(image, the toy's coverage as an 'L' image) of image `index`: the true mask."""
    rng = random.Random(f"synthetic-concept/{seed}/{index}")
    big = resolution * SUPERSAMPLE
    scene = _draw_background(big, rng)

    toy = _draw_toy_robot(max(8, int(big * rng.uniform(0.35, 0.75))))
    if rng.random() < 0.5:
        toy = toy.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    toy = toy.rotate(rng.uniform(-30.0, 30.0), resample=Image.Resampling.BICUBIC, expand=True)
    toy = toy.crop(toy.getbbox())  # tight box so positioning keeps it in frame
    fit = min(1.0, 0.96 * big / max(toy.size))  # a rotated large toy may not fit
    if fit < 1.0:
        toy = toy.resize((max(1, int(toy.width * fit)), max(1, int(toy.height * fit))),
                         Image.Resampling.LANCZOS)
    x = rng.randint(0, big - toy.width)
    y = rng.randint(0, big - toy.height)
    scene.alpha_composite(toy, (x, y))
    coverage = Image.new("L", scene.size, 0)
    coverage.paste(toy.getchannel("A"), (x, y))
    size = (resolution, resolution)
    return (
        scene.convert("RGB").resize(size, Image.Resampling.LANCZOS),
        coverage.resize(size, Image.Resampling.BILINEAR),
    )


def draw_synthetic_concept(
    num_images: int = 5, resolution: int = 64, seed: int = 0
) -> list[Image.Image]:
    """RGB images of one toy robot in varied poses and scenes, deterministic by seed.

    The quickstart has no photos, so this is the subject a personalization method
    learns.  Image ``i`` depends only on ``(seed, i, resolution)``, so asking for
    more images extends the set without changing the earlier ones.
    """
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    if resolution < 16:
        raise ValueError(f"resolution must be >= 16, got {resolution}")
    return [_draw_one_image(i, resolution, seed) for i in range(num_images)]


def synthetic_concept_masks(
    num_images: int = 5, resolution: int = 64, seed: int = 0
) -> list[np.ndarray]:
    """The true foreground of each `draw_synthetic_concept` image: (H, W) bool, the pixels
    the toy covers at least half (segmentation is measured against it)."""
    scenes = [_draw_one_scene(i, resolution, seed)[1] for i in range(num_images)]
    return [np.asarray(coverage) >= 128 for coverage in scenes]
