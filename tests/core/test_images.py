"""core/images.py: to_tensor and resize_and_crop, the preprocessing every image goes through."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from helpers import gradient_image
from PIL import Image

from core.images import resize_and_crop, to_tensor

# --------------------------------------------------------------------------- to_tensor


def test_to_tensor_range_layout_and_values() -> None:
    array = np.zeros((2, 3, 3), dtype=np.uint8)
    array[0, 0] = (0, 255, 51)
    array[1, 2] = (255, 0, 102)
    tensor = to_tensor(Image.fromarray(array, "RGB"))
    assert tensor.shape == (3, 2, 3) and tensor.dtype == torch.float32
    assert tensor[:, 0, 0].tolist() == pytest.approx([-1.0, 1.0, 51 / 127.5 - 1])
    assert tensor[:, 1, 2].tolist() == pytest.approx([1.0, -1.0, 102 / 127.5 - 1])
    assert tensor.is_contiguous()


# --------------------------------------------------------------------------- resize_and_crop


@pytest.mark.parametrize("size", [(64, 32), (32, 64), (20, 20), (17, 90)])
@pytest.mark.parametrize("random_crop", [False, True])
def test_resize_and_crop_gives_square(size: tuple[int, int], random_crop: bool) -> None:
    out = resize_and_crop(gradient_image(*size), 24, random_crop, random.Random(0))
    assert out.size == (24, 24)


def test_centre_crop_is_centred_and_uses_no_randomness() -> None:
    image = gradient_image(96, 32)  # resized to 72x24; the centre crop starts at x=24
    rng = random.Random(5)
    state = rng.getstate()
    out = np.asarray(resize_and_crop(image, 24, False, rng), dtype=np.float32)
    assert rng.getstate() == state
    full = np.asarray(
        image.resize((72, 24), Image.Resampling.BICUBIC), dtype=np.float32
    )
    np.testing.assert_array_equal(out, full[:, 24:48])


def test_random_crop_varies_with_rng_and_stays_inside() -> None:
    image = gradient_image(128, 32)  # resized to 96x24: 72 spare columns
    full = np.asarray(image.resize((96, 24), Image.Resampling.BICUBIC))
    lefts = set()
    for seed in range(20):
        out = np.asarray(resize_and_crop(image, 24, True, random.Random(seed)))
        matches = [x for x in range(73) if np.array_equal(full[:, x : x + 24], out)]
        assert matches, "the crop must be a window of the resized image"
        lefts.add(matches[0])
    assert len(lefts) > 5
