"""Segmentation backends: the weight-free fallback against the synthetic toy's true masks,
and the mask folder's checks."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from preparation.segmentation.base import check_foreground, iou
from preparation.segmentation.fallback import GrabCutSegmenter
from preparation.segmentation.masks import MaskFolder, same_aspect
from preparation.synthetic_concept import draw_synthetic_concept, synthetic_concept_masks


@pytest.mark.parametrize("seed", [0, 1])
def test_the_fallback_finds_the_synthetic_toy(seed: int) -> None:
    images = draw_synthetic_concept(10, 128, seed)
    truths = synthetic_concept_masks(10, 128, seed)
    segmenter = GrabCutSegmenter()
    scores = [
        iou(segmenter.foreground(image, "toy"), truth) for image, truth in zip(images, truths)
    ]
    assert min(scores) >= 0.8, scores
    assert np.mean(scores) >= 0.9, scores


def test_the_fallback_is_deterministic_and_keeps_the_photo_size() -> None:
    (image,) = draw_synthetic_concept(1, 96, 3)
    first = GrabCutSegmenter().foreground(image.resize((150, 96)), "toy")
    second = GrabCutSegmenter().foreground(image.resize((150, 96)), "toy")
    assert first.shape == (96, 150) and first.dtype == bool
    assert np.array_equal(first, second)


def test_the_true_masks_match_the_images() -> None:
    masks = synthetic_concept_masks(3, 64, 0)
    assert [m.shape for m in masks] == [(64, 64)] * 3
    assert all(0.02 < m.mean() < 0.8 for m in masks)


def write_masks(folder: Path, names: list[str], value: int | None = None) -> None:
    folder.mkdir()
    for index, name in enumerate(names):
        mask = np.zeros((20, 30), np.uint8)
        mask[5:15, 8 + index : 20 + index] = 255
        if value is not None:
            mask[:] = value
        Image.fromarray(mask).save(folder / f"{Path(name).stem}.png")


def test_a_mask_folder_reads_masks_by_photo_name(tmp_path: Path) -> None:
    write_masks(tmp_path / "masks", ["00.jpg", "01.jpg"])
    masks = MaskFolder(tmp_path / "masks", ["00.jpg", "01.jpg"])
    mask = masks.mask_for("01.jpg", (30, 20))
    assert mask.shape == (20, 30) and mask.sum() == 10 * 12
    assert mask[5, 9] and not mask[5, 8]


def test_mask_folder_errors_name_the_problem(tmp_path: Path) -> None:
    write_masks(tmp_path / "masks", ["00.jpg", "02.jpg"])
    with pytest.raises(FileNotFoundError, match=r"no mask for photo\(s\) \['01'\].*01.png"):
        MaskFolder(tmp_path / "masks", ["00.jpg", "01.jpg"])
    write_masks(tmp_path / "empty", ["00.jpg"], value=0)
    with pytest.raises(ValueError, match="is empty"):
        MaskFolder(tmp_path / "empty", ["00.jpg"]).mask_for("00.jpg", (30, 20))
    write_masks(tmp_path / "full", ["00.jpg"], value=255)
    with pytest.raises(ValueError, match="all foreground"):
        MaskFolder(tmp_path / "full", ["00.jpg"]).mask_for("00.jpg", (30, 20))
    with pytest.raises(ValueError, match="is empty"):
        check_foreground(np.zeros((4, 4), bool), "x")


def test_the_fallback_answers_a_photo_it_misses_with_its_mask_not_an_error() -> None:
    # A plain photo has nothing unlike its border: the mask is empty, and whether that photo is
    # left out is the caller's to say (preparation/augmentation/sources.py), not an error
    # telling the user to draw in a mask they never gave.
    mask = GrabCutSegmenter().foreground(Image.new("RGB", (32, 32), (60, 90, 120)), "cat")
    assert mask.shape == (32, 32) and mask.dtype == bool and not mask.any()


@pytest.mark.parametrize("photo", [(60, 40), (61, 40), (15, 10)])
def test_a_mask_of_another_size_is_resized_with_a_warning_naming_both_sizes(
    tmp_path: Path, photo: tuple
) -> None:
    write_masks(tmp_path / "masks", ["00.jpg"])  # 30x20: the photo's aspect ratio, rounded
    folder = MaskFolder(tmp_path / "masks", ["00.jpg"])
    sizes = f"{photo[0]}x{photo[1]}"
    with pytest.warns(UserWarning, match=rf"masks/00.png is 30x20 px, its photo 00.jpg {sizes}"):
        mask = folder.mask_for("00.jpg", (45, 30), photo)
    assert mask.shape == (30, 45) and mask.any()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a mask of the photo's own size: no word
        folder.mask_for("00.jpg", (15, 10), (30, 20))


@pytest.mark.parametrize("photo", [(30, 30), (40, 20), (30, 21)])
def test_a_mask_of_another_aspect_ratio_is_refused(tmp_path: Path, photo: tuple) -> None:
    write_masks(tmp_path / "masks", ["00.jpg"])  # 30x20
    folder = MaskFolder(tmp_path / "masks", ["00.jpg"])
    sizes = f"{photo[0]}x{photo[1]}"
    with pytest.raises(ValueError, match=rf"00.png is 30x20 px, its photo 00.jpg {sizes}: .*"
                       rf"give a mask of the photo's size \({sizes} px\)"):  # fmt: skip
        folder.mask_for("00.jpg", (30, 20), photo)


@pytest.mark.parametrize(
    ("mask", "photo", "same"),
    [((30, 20), (60, 40), True), ((43, 32), (64, 48), True), ((100, 67), (3000, 2000), True),
     ((30, 20), (30, 21), False), ((512, 512), (512, 500), False), ((40, 30), (30, 40), False)],
)  # fmt: skip
def test_same_aspect_allows_rounding_only(mask: tuple, photo: tuple, same: bool) -> None:
    assert same_aspect(mask, photo) is same
