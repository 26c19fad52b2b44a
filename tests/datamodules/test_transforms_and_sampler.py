"""Augmentation (random_rescale), prompt templates and ResumableSampler."""

from __future__ import annotations

import random

import numpy as np
import pytest
from helpers import gradient_image
from PIL import Image

from datamodules.sampler import ResumableSampler
from datamodules.transforms import random_rescale
from prompts.templates import (
    FAR_AWAY_WORDS,
    SIMPLE_TEMPLATES,
    ZOOMED_IN_WORDS,
    check_templates,
)

GRAY = 127 / 127.5 - 1.0


# --------------------------------------------------------------------------- random_rescale


def _rescale_many(resolution: int, n: int = 200):
    image = gradient_image(resolution, resolution)
    for seed in range(n):
        yield random_rescale(image, resolution, random.Random(seed))


@pytest.mark.parametrize("resolution", [32, 48])
def test_random_rescale_masks_prefixes_and_fill(resolution: int) -> None:
    seen = {"far": 0, "zoom": 0, "plain_partial": 0}
    for canvas, mask, prefix in _rescale_many(resolution):
        assert canvas.size == (resolution, resolution) and canvas.mode == "RGB"
        assert mask.shape == (resolution, resolution) and mask.dtype == np.float32
        assert set(np.unique(mask).tolist()) <= {0.0, 1.0}
        if prefix in ZOOMED_IN_WORDS:
            seen["zoom"] += 1
            assert mask.all(), "an enlarged crop fills the whole canvas"
            continue
        # Shrunk: the ones form one even-sided square, the rest is the gray fill.
        rows, cols = np.nonzero(mask)
        side = rows.max() - rows.min() + 1
        assert cols.max() - cols.min() + 1 == side
        assert mask.sum() == side * side
        assert side % 2 == 0
        assert resolution // 3 <= side <= resolution
        if side < 0.6 * resolution:
            seen["far"] += 1
            assert prefix in FAR_AWAY_WORDS
        else:
            assert prefix == ""
            seen["plain_partial"] += side < resolution
        pixels = np.asarray(canvas)
        assert (pixels[mask == 0] == 127).all()
    # The seeds reach every branch, so the checks above were all exercised.
    assert all(count > 0 for count in seen.values()), seen


def test_random_rescale_shrunk_and_enlarged_directly() -> None:
    resolution = 40
    far = zoom = 0
    for _canvas, mask, prefix in _rescale_many(resolution, 300):
        if prefix in FAR_AWAY_WORDS:
            far += 1
            side = round(np.sqrt(mask.sum()))
            assert side < 0.6 * resolution
            assert mask.sum() == side * side
            assert not mask.all()
        elif prefix in ZOOMED_IN_WORDS:
            zoom += 1
            assert mask.all()
    # Custom Diffusion shrinks with probability 0.66, enlarging the rest of the time.
    assert 40 < zoom < 160 and far > 20


def test_random_rescale_is_deterministic_per_rng() -> None:
    image = gradient_image(32, 32)
    a = random_rescale(image, 32, random.Random("x/3"))
    b = random_rescale(image, 32, random.Random("x/3"))
    assert a[0].tobytes() == b[0].tobytes() and a[2] == b[2]
    np.testing.assert_array_equal(a[1], b[1])


def test_random_rescale_pastes_the_scaled_image_where_the_mask_is() -> None:
    image = gradient_image(32, 32)
    for seed in range(50):
        canvas, mask, _prefix = random_rescale(image, 32, random.Random(seed))
        if mask.all():
            continue
        rows, cols = np.nonzero(mask)
        side = rows.max() - rows.min() + 1
        expected = np.asarray(image.resize((side, side), Image.Resampling.BICUBIC))
        got = np.asarray(canvas)[
            rows.min() : rows.max() + 1, cols.min() : cols.max() + 1
        ]
        np.testing.assert_array_equal(got, expected)
        return
    pytest.fail("no shrunk sample among 50 seeds")


# --------------------------------------------------------------------------- prompts


def test_default_templates_are_valid_and_format() -> None:
    templates = check_templates(SIMPLE_TEMPLATES)
    assert len(templates) == len(SIMPLE_TEMPLATES) > 10
    assert all("<v1> dog" in t.format("<v1> dog") for t in templates)


def test_empty_template_list_is_rejected() -> None:
    with pytest.raises(ValueError, match="empty"):
        check_templates([])


# --------------------------------------------------------------------------- ResumableSampler


def _order(length: int, seed: int, epoch: int, **kwargs) -> list[int]:
    sampler = ResumableSampler(
        range(length), num_replicas=1, rank=0, seed=seed, **kwargs
    )
    sampler.set_epoch(epoch)
    return list(sampler)


def test_sampler_is_a_permutation_offset_by_epoch() -> None:
    for epoch in (0, 1, 3):
        order = _order(20, seed=7, epoch=epoch)
        assert sorted(order) == [epoch * 20 + i for i in range(20)]


def test_set_epoch_changes_order_same_epoch_same_order() -> None:
    local = [[i - e * 30 for i in _order(30, seed=1, epoch=e)] for e in range(3)]
    assert local[0] != local[1] and local[1] != local[2] and local[0] != local[2]
    assert _order(30, seed=1, epoch=2) == _order(30, seed=1, epoch=2)
    # The same sampler object gives the same order when iterated twice in one epoch.
    sampler = ResumableSampler(range(30), num_replicas=1, rank=0, seed=1)
    sampler.set_epoch(1)
    assert list(sampler) == list(sampler)


def test_seed_changes_order() -> None:
    assert _order(30, seed=0, epoch=0) != _order(30, seed=1, epoch=0)


def test_no_shuffle_keeps_order() -> None:
    assert _order(10, seed=3, epoch=2, shuffle=False) == [20 + i for i in range(10)]


@pytest.mark.parametrize("skip", [0, 1, 6, 24, 25])
def test_skip_samples_yields_the_tail_only_once(skip: int) -> None:
    full = _order(24, seed=4, epoch=2)
    sampler = ResumableSampler(
        range(24), num_replicas=1, rank=0, seed=4, skip_samples=skip
    )
    sampler.set_epoch(2)
    assert list(sampler) == full[skip:]
    assert list(sampler) == full  # the next pass is a whole epoch again
    assert sampler.skip_samples == 0


def test_skip_survives_set_epoch_before_the_first_iteration() -> None:
    # Lightning calls set_epoch(restored_epoch) before iterating the resumed loader.
    sampler = ResumableSampler(
        range(16), num_replicas=1, rank=0, seed=0, skip_samples=5
    )
    sampler.set_epoch(3)
    assert list(sampler) == _order(16, seed=0, epoch=3)[5:]


def test_two_ranks_cover_an_even_dataset_exactly_once() -> None:
    length, epoch = 26, 1
    shares = []
    for rank in (0, 1):
        sampler = ResumableSampler(range(length), num_replicas=2, rank=rank, seed=9)
        sampler.set_epoch(epoch)
        shares.append(list(sampler))
        assert len(sampler) == length // 2 == len(shares[-1])
    assert not set(shares[0]) & set(shares[1])
    assert sorted(shares[0] + shares[1]) == [epoch * length + i for i in range(length)]


def test_rank_skip_applies_to_its_own_share() -> None:
    full = []
    for rank in (0, 1):
        sampler = ResumableSampler(range(20), num_replicas=2, rank=rank, seed=2)
        full.append(list(sampler))
    for rank in (0, 1):
        sampler = ResumableSampler(
            range(20), num_replicas=2, rank=rank, seed=2, skip_samples=4
        )
        assert list(sampler) == full[rank][4:]
