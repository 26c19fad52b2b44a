"""M-Aug composition: each concept in its half, the prompt in left-right order, seeded."""

from __future__ import annotations

import random

import numpy as np
import pytest
from PIL import Image

from preparation.augmentation.cutout import make_cutout, paste_into
from preparation.augmentation.m_aug import side_by_side
from preparation.synthetic_concept import draw_synthetic_concept, synthetic_concept_masks


def toy_cutout(seed: int, phrase: str):
    (image,) = draw_synthetic_concept(1, 96, seed)
    (mask,) = synthetic_concept_masks(1, 96, seed)
    return make_cutout(image, mask, phrase)


def test_two_concepts_each_in_its_half_named_in_order() -> None:
    left, right = toy_cutout(0, "<v1> toy"), toy_cutout(5, "<v2> toy")
    for seed in range(5):
        sample = side_by_side(left, right, 128, random.Random(seed))
        assert sample.prompt == "a photo of a <v1> toy and a <v2> toy"
        left_mask, right_mask = sample.masks
        assert left_mask.any() and right_mask.any()
        assert not left_mask[:, 64:].any() and not right_mask[:, :64].any()
        assert sample.image.size == (128, 128)


def test_the_same_seed_gives_the_same_image() -> None:
    left, right = toy_cutout(0, "<v1> toy"), toy_cutout(5, "<v2> toy")
    first = side_by_side(left, right, 96, random.Random(3))
    again = side_by_side(left, right, 96, random.Random(3))
    other = side_by_side(left, right, 96, random.Random(4))
    assert np.array_equal(np.asarray(first.image), np.asarray(again.image))
    assert not np.array_equal(np.asarray(first.image), np.asarray(other.image))


def test_a_pasted_cutout_keeps_its_pixels_and_reports_where_it_landed() -> None:
    photo = Image.new("RGB", (40, 30), (0, 0, 255))
    mask = np.zeros((30, 40), bool)
    mask[10:20, 5:25] = True  # a 20 x 10 blue block
    cutout = make_cutout(photo, mask, "<v1> block")
    assert cutout.image.size == (20, 10)
    canvas = Image.new("RGB", (100, 100), (255, 255, 255))
    placed = paste_into(canvas, cutout, (0, 0, 40, 40))  # scaled 2x: 40 x 20, centred
    assert placed.sum() == 40 * 20 and placed[10:30, 0:40].all()
    pixels = np.asarray(canvas)
    assert (pixels[placed] == (0, 0, 255)).all() and (pixels[~placed] == 255).all()
    with pytest.raises(ValueError, match="empty"):
        make_cutout(photo, np.zeros((30, 40), bool), "<v1> block")
