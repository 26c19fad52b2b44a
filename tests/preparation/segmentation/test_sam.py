"""The ``sam`` backend on the tiny random SAM and Grounding-DINO: plumbing, not quality.

Random weights say nothing about where the toy is, so these check what holds for any weights:
shapes and dtypes, determinism, the centre box without a detector, regions inside the concept
and disjoint, labels only from the part list or places, the prompts' wording, clear errors.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_regions import POSITIONS

from preparation.segmentation import sam as sam_module
from preparation.segmentation.regions import MIN_SHARE, over_segment
from preparation.segmentation.sam import (
    SamSegmenter,
    centre_box,
    disjoint_pieces,
    grid_points,
)
from preparation.synthetic_concept import draw_synthetic_concept, synthetic_concept_masks
from pretrained.eval_models import EvalModelNotFoundError
from pretrained.grounded_sam import best_boxes, sam_masks

PARTS = ["head", "arm", "leg", "wheel"]


@pytest.fixture(scope="module")
def segmenter() -> SamSegmenter:
    return SamSegmenter("tiny-sam", "tiny-grounding-dino")


@pytest.fixture(scope="module")
def toy() -> tuple[Image.Image, np.ndarray]:
    """The synthetic toy at a non-square size, and its true mask."""
    (image,) = draw_synthetic_concept(1, 96, 0)
    (mask,) = synthetic_concept_masks(1, 96, 0)
    size = (120, 96)
    resized = Image.fromarray(mask).resize(size, Image.Resampling.NEAREST)
    return image.resize(size), np.asarray(resized)


def test_foreground_is_a_bool_mask_at_the_photo_size_and_deterministic(
    segmenter: SamSegmenter, toy: tuple[Image.Image, np.ndarray]
) -> None:
    image, _ = toy
    first = segmenter.foreground(image, "toy")
    second = segmenter.foreground(image, "toy")
    assert first.shape == (96, 120) and first.dtype == bool
    assert np.array_equal(first, second)


def test_the_centre_box_prompts_sam_without_a_class_word_or_detector(
    segmenter: SamSegmenter, toy: tuple[Image.Image, np.ndarray]
) -> None:
    image, _ = toy
    assert centre_box((100, 50)) == pytest.approx([10, 5, 90, 45])
    centre = centre_box(image.size)
    assert segmenter.prompt_box(image, "  ") == centre
    blind = SamSegmenter("tiny-sam", None)
    assert blind.detector is None and blind.prompt_box(image, "toy") == centre
    assert np.array_equal(blind.foreground(image, "toy"), segmenter.foreground(image, ""))
    assert blind.find_parts(image, toy[1], PARTS) == []  # no detector, no named parts


def test_detected_boxes_lie_in_the_image(
    segmenter: SamSegmenter, toy: tuple[Image.Image, np.ndarray]
) -> None:
    image, _ = toy
    boxes, scores = best_boxes(segmenter.detector, segmenter.detector_processor, [image],
                               ["toy."])  # fmt: skip
    x0, y0, x1, y1 = boxes[0].tolist()
    assert 0 <= x0 <= x1 <= 120 and 0 <= y0 <= y1 <= 96 and 0 <= float(scores[0]) <= 1
    with pytest.raises(ValueError, match="boxes or points"):
        sam_masks(segmenter.sam, segmenter.sam_processor, [image])


def test_found_parts_are_named_from_the_list_inside_the_concept(
    toy: tuple[Image.Image, np.ndarray],
) -> None:
    image, concept = toy
    eager = SamSegmenter("tiny-sam", "tiny-grounding-dino", box_threshold=0.0)
    parts = eager.find_parts(image, concept, PARTS)
    assert parts, "the tiny models found no part at all; the test checks nothing"
    again = eager.find_parts(image, concept, PARTS)
    assert [p.label for p in again] == [p.label for p in parts]
    assert all(np.array_equal(a.mask, b.mask) for a, b in zip(parts, again))
    for part in parts:
        assert part.named and part.label in PARTS
        assert part.mask.dtype == bool and not (part.mask & ~concept).any()
        assert part.mask.sum() >= MIN_SHARE * concept.sum()
    assert parts[0].prompt("<v1> toy") == f"the {parts[0].label} of <v1> toy"
    assert eager.find_parts(image, concept, []) == []
    strict = SamSegmenter("tiny-sam", "tiny-grounding-dino", box_threshold=1.01)
    assert strict.find_parts(image, concept, PARTS) == []  # nothing scores: no name invented


def test_parts_too_small_or_as_large_as_the_concept_are_skipped(
    monkeypatch: pytest.MonkeyPatch, toy: tuple[Image.Image, np.ndarray]
) -> None:
    image, concept = toy
    rows, cols = np.nonzero(concept)
    speck, whole, good = (np.zeros((1, 3, 96, 120), bool) for _ in range(3))
    speck[0, :, rows[0], cols[0]] = True
    whole[0] = concept
    good[0, :, rows[: len(rows) // 3], cols[: len(rows) // 3]] = True
    masks = torch.from_numpy(np.concatenate([speck, whole, good]))
    fake = [(masks, torch.zeros(3, 3))]
    monkeypatch.setattr(sam_module, "sam_masks", lambda *args, **kwargs: fake)
    finder = SamSegmenter("tiny-sam", "tiny-grounding-dino", box_threshold=0.0)
    parts = finder.find_parts(image, concept, ["ear", "body", "arm"])
    assert [p.label for p in parts] == ["arm"]


def test_regions_by_place_are_disjoint_pieces_of_the_concept(
    segmenter: SamSegmenter, toy: tuple[Image.Image, np.ndarray]
) -> None:
    image, concept = toy
    regions = segmenter.regions(image, concept, num_regions=4)
    again = segmenter.regions(image, concept, num_regions=4)
    assert 1 <= len(regions) <= 4
    assert [r.label for r in regions] == [r.label for r in again]
    assert all(np.array_equal(a.mask, b.mask) for a, b in zip(regions, again))
    union = np.zeros_like(concept)
    for region in regions:
        assert not region.named and region.label in POSITIONS
        assert not (region.mask & ~concept).any() and not (region.mask & union).any()
        union |= region.mask
    assert regions[0].prompt("<v1> toy") == f"the {regions[0].label} part of <v1> toy"


def test_regions_fall_back_to_superpixels_when_sam_gives_nothing(
    monkeypatch: pytest.MonkeyPatch, toy: tuple[Image.Image, np.ndarray]
) -> None:
    image, concept = toy
    nothing = [(torch.zeros(5, 3, 96, 120, dtype=torch.bool), torch.zeros(5, 3))]
    monkeypatch.setattr(sam_module, "sam_masks", lambda *args, **kwargs: nothing)
    regions = SamSegmenter("tiny-sam", None).regions(image, concept, 6)
    expected = over_segment(np.asarray(image), concept, 6)
    assert expected and [r.label for r in regions] == [r.label for r in expected]


def test_grid_points_and_pieces() -> None:
    concept = np.zeros((40, 40), bool)
    concept[10:30, 10:30] = True
    concept[10:20, 10:20] = False  # an L shape: a quarter of its box is off the concept
    points = grid_points(concept, 4)
    assert len(points) == 12 and all(concept[int(y), int(x)] for x, y in points)
    left, upper, whole = (np.zeros((1, 3, 40, 40), bool) for _ in range(3))
    left[..., :, :25] = True  # 200 px of the concept
    upper[..., :20, :] = True  # 100 px, 50 of them shared with `left`
    whole[...] = True  # the whole concept: too large to be a piece
    masks = np.concatenate([left, upper, whole])
    scores = np.array([[0.5] * 3, [0.9] * 3, [1.0] * 3])
    pieces = disjoint_pieces(masks, scores, concept, limit=5)
    # `upper` is surer, so it keeps the shared pixels; largest first.
    assert [int(p.sum()) for p in pieces] == [150, 100]
    assert not (pieces[0] & pieces[1]).any() and not (pieces[0] & ~concept).any()
    assert len(disjoint_pieces(masks, scores, concept, limit=1)) == 1


def test_a_missing_model_names_the_option(tmp_path: Path) -> None:
    with pytest.raises(EvalModelNotFoundError, match="augmentation.sam_model"):
        SamSegmenter(str(tmp_path / "no-sam"), None)
    with pytest.raises(EvalModelNotFoundError, match="augmentation.grounding_model"):
        SamSegmenter("tiny-sam", str(tmp_path / "no-dino"))
