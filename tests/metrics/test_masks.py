"""Foreground mask sources of DINO-FG: the weight-free one and Grounded-SAM on tiny models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metrics.images import pil_to_tensor
from metrics.masks import (
    MASK_SOURCES,
    BorderContrastMasks,
    GroundedSamMasks,
    build_mask_source,
    otsu_threshold,
)
from metrics.settings import MASK_SOURCE_NAMES
from preparation.synthetic_concept import BODY_COLOR, draw_synthetic_concept


def test_otsu_splits_a_bimodal_sample_between_its_modes() -> None:
    rng = np.random.default_rng(0)
    low, high = rng.normal(0.2, 0.02, 500), rng.normal(0.8, 0.02, 300)
    threshold = otsu_threshold(np.concatenate([low, high]))
    assert low.max() < threshold < high.min()


def test_border_contrast_finds_the_synthetic_toy() -> None:
    image = draw_synthetic_concept(1, 64, seed=3)[0]
    pixels = np.asarray(image).astype(int)
    body = np.abs(pixels - np.array(BODY_COLOR)).sum(axis=-1) < 60  # the toy's orange
    assert body.sum() > 20
    mask = BorderContrastMasks()(pil_to_tensor(image)[None], "toy")[0, 0].numpy()
    assert set(np.unique(mask)) <= {0.0, 1.0}
    assert mask[body].mean() > 0.9  # the body is foreground ...
    assert mask.mean() < 0.8  # ... and not everything is
    corners = [mask[0, 0], mask[0, -1], mask[-1, 0], mask[-1, -1]]
    assert sum(corners) <= 1


def test_border_contrast_on_a_flat_image_keeps_the_whole_image() -> None:
    masks = BorderContrastMasks()(torch.full((2, 3, 8, 8), 0.5), "toy")
    assert masks.shape == (2, 1, 8, 8) and bool((masks == 1).all())


def test_grounded_sam_on_tiny_models_gives_one_binary_mask_per_image() -> None:
    source = GroundedSamMasks("tiny-grounding-dino", "tiny-sam")
    images = torch.rand(2, 3, 40, 48, generator=torch.Generator().manual_seed(0))
    masks = source(images, "dog")
    assert masks.shape == (2, 1, 40, 48)
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    assert source.definition()["grounding_dino"] == "tiny-grounding-dino"


def test_unknown_mask_source_is_named() -> None:
    with pytest.raises(ValueError, match="mask source 'sam3'.*border_contrast"):
        build_mask_source("sam3")


def test_the_config_accepts_exactly_the_registered_sources() -> None:
    assert set(MASK_SOURCE_NAMES) == set(MASK_SOURCES)
