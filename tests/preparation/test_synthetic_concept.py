"""Tests for the synthetic personalization concept generator."""

import numpy as np
import pytest
from PIL import Image

from preparation.synthetic_concept import BODY_COLOR, MUTED_PALETTE, draw_synthetic_concept


def _bytes(images: list[Image.Image]) -> list[bytes]:
    return [im.tobytes() for im in images]


def _body_pixel_count(image: Image.Image, tolerance: float = 60.0) -> int:
    pixels = np.asarray(image, dtype=np.int32)
    distance = np.sqrt(((pixels - np.array(BODY_COLOR)) ** 2).sum(axis=-1))
    return int((distance < tolerance).sum())


@pytest.mark.parametrize("num_images,resolution", [(1, 16), (3, 64), (2, 97)])
def test_size_mode_and_count(num_images: int, resolution: int) -> None:
    images = draw_synthetic_concept(num_images=num_images, resolution=resolution, seed=3)
    assert len(images) == num_images
    for im in images:
        assert isinstance(im, Image.Image)
        assert im.mode == "RGB"
        assert im.size == (resolution, resolution)


def test_deterministic_for_same_arguments() -> None:
    first = draw_synthetic_concept(num_images=4, resolution=48, seed=7)
    second = draw_synthetic_concept(num_images=4, resolution=48, seed=7)
    assert _bytes(first) == _bytes(second)


def test_different_seeds_give_different_images() -> None:
    a = _bytes(draw_synthetic_concept(num_images=3, resolution=48, seed=0))
    b = _bytes(draw_synthetic_concept(num_images=3, resolution=48, seed=1))
    assert all(x != y for x, y in zip(a, b))


def test_image_i_does_not_depend_on_num_images() -> None:
    five = _bytes(draw_synthetic_concept(num_images=5, resolution=40, seed=11))
    three = _bytes(draw_synthetic_concept(num_images=3, resolution=40, seed=11))
    assert five[:3] == three


def test_images_within_one_call_differ() -> None:
    images = draw_synthetic_concept(num_images=5, resolution=64, seed=5)
    arrays = [np.asarray(im, dtype=np.int16) for im in images]
    for i in range(len(arrays)):
        for j in range(i + 1, len(arrays)):
            # Clearly different scenes/poses, not just a couple of changed pixels.
            assert np.abs(arrays[i] - arrays[j]).mean() > 2.0, (i, j)


def test_background_palette_is_far_from_body_color() -> None:
    # Otherwise the body-colour check below could be satisfied by the background.
    for colour in MUTED_PALETTE:
        assert np.linalg.norm(np.subtract(colour, BODY_COLOR)) > 120, colour


@pytest.mark.parametrize("seed", [0, 1, 2, 42])
def test_body_color_present_in_every_image(seed: int) -> None:
    for index, im in enumerate(draw_synthetic_concept(num_images=5, resolution=64, seed=seed)):
        assert _body_pixel_count(im) >= 20, (seed, index)


@pytest.mark.parametrize(
    "kwargs,name",
    [
        ({"num_images": 0}, "num_images"),
        ({"num_images": -2}, "num_images"),
        ({"resolution": 15}, "resolution"),
        ({"resolution": 0}, "resolution"),
    ],
)
def test_invalid_arguments_raise_value_error(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name) as excinfo:
        draw_synthetic_concept(**kwargs)
    assert ">=" in str(excinfo.value)
