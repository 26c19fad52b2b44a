"""R-Aug's weight-free over-segmentation: regions inside the mask, named by position only."""

from __future__ import annotations

import numpy as np

from preparation.segmentation.regions import (
    Region,
    SuperpixelRegions,
    over_segment,
    position_of,
)
from preparation.synthetic_concept import draw_synthetic_concept, synthetic_concept_masks

POSITIONS = {
    "upper left", "upper", "upper right", "left", "middle", "right",
    "lower left", "lower", "lower right",
}  # fmt: skip


def test_regions_lie_inside_the_concept_and_do_not_overlap() -> None:
    (image,) = draw_synthetic_concept(1, 128, 0)
    (mask,) = synthetic_concept_masks(1, 128, 0)
    regions = over_segment(np.asarray(image), mask, num_regions=6)
    assert 2 <= len(regions) <= 12
    union = np.zeros_like(mask)
    for region in regions:
        assert not (region.mask & ~mask).any()
        assert not (region.mask & union).any()
        union |= region.mask
        assert region.label in POSITIONS and not region.named
    assert union.sum() >= 0.9 * mask.sum()  # only small scraps dropped
    sizes = [r.mask.sum() for r in regions]
    assert sizes == sorted(sizes, reverse=True)


def test_positions_are_thirds_of_the_bounding_box() -> None:
    concept = np.zeros((90, 90), bool)
    concept[:, :] = True

    def block(rows: slice, cols: slice) -> np.ndarray:
        region = np.zeros_like(concept)
        region[rows, cols] = True
        return region

    assert position_of(block(slice(0, 20), slice(0, 20)), concept) == "upper left"
    assert position_of(block(slice(0, 20), slice(35, 55)), concept) == "upper"
    assert position_of(block(slice(35, 55), slice(70, 90)), concept) == "right"
    assert position_of(block(slice(35, 55), slice(35, 55)), concept) == "middle"
    assert position_of(block(slice(70, 90), slice(70, 90)), concept) == "lower right"
    region = block(slice(70, 90), slice(0, 20))
    assert Region(region, "lower left").prompt("<v1> dog") == "the lower left part of <v1> dog"


def test_a_named_part_is_called_by_its_name() -> None:
    mask = np.ones((4, 4), bool)
    assert Region(mask, "hat", named=True).prompt("<v1> man") == "the hat of <v1> man"
    assert Region(mask, "upper").prompt("<v1> man") == "the upper part of <v1> man"


def test_the_weight_free_finder_names_no_parts() -> None:
    (image,) = draw_synthetic_concept(1, 64, 0)
    (mask,) = synthetic_concept_masks(1, 64, 0)
    finder = SuperpixelRegions()
    assert finder.find_parts(image, mask, ["head", "arm"]) == []
    regions = finder.regions(image, mask, 4)
    expected = over_segment(np.asarray(image), mask, 4)
    assert regions and [r.label for r in regions] == [r.label for r in expected]
