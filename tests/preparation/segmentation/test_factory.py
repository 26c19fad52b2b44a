"""Backends and region finders by name, and R-Aug's default part lists."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from preparation.segmentation.factory import BACKENDS, build_region_finder, build_segmenter
from preparation.segmentation.fallback import GrabCutSegmenter
from preparation.segmentation.masks import MaskFolder
from preparation.segmentation.part_lists import PART_LISTS, parts_for
from preparation.segmentation.regions import SuperpixelRegions
from preparation.segmentation.sam import SamSegmenter


def test_unknown_backends_list_the_choices() -> None:
    for build in (build_segmenter, build_region_finder):
        with pytest.raises(ValueError, match=r"'sam2'.*\['fallback', 'masks', 'sam'\]"):
            build("sam2")
    assert BACKENDS == ("fallback", "masks", "sam")


def test_each_backend_builds(tmp_path: Path) -> None:
    assert isinstance(build_segmenter("fallback"), GrabCutSegmenter)
    (tmp_path / "masks").mkdir()
    mask = np.zeros((8, 8), np.uint8)
    mask[2:6, 2:6] = 255
    Image.fromarray(mask).save(tmp_path / "masks" / "00.png")
    folder = build_segmenter("masks", folder=tmp_path / "masks", photo_names=["00.jpg"])
    assert isinstance(folder, MaskFolder) and folder.mask_for("00.jpg", (8, 8)).sum() == 16
    sam = build_segmenter("sam", sam_model="tiny-sam", grounding_model=None)
    assert isinstance(sam, SamSegmenter)
    finder = build_region_finder("sam", sam_model="tiny-sam", grounding_model=None)
    assert isinstance(finder, SamSegmenter) and finder.sam is sam.sam  # loaded once
    assert isinstance(build_region_finder("masks"), SuperpixelRegions)
    assert isinstance(build_region_finder("fallback"), SuperpixelRegions)


def test_backend_option_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="folder= and photo_names="):
        build_segmenter("masks", folder=tmp_path)
    with pytest.raises(ValueError, match="no options"):
        build_segmenter("fallback", sam_model="tiny-sam")
    Image.fromarray(np.full((8, 8), 255, np.uint8)).save(tmp_path / "01.png")
    with pytest.raises(FileNotFoundError, match="no mask for photo"):  # checked when built
        build_segmenter("masks", folder=tmp_path, photo_names=["00.jpg"])


def test_configured_parts_win_and_unknown_classes_have_none() -> None:
    assert parts_for("dog", None)[:2] == ["head", "ear"] and "tail" in parts_for("Dog ")
    assert {"hair", "face", "hat", "shirt", "pants", "shoes"} <= set(parts_for("man"))
    assert {"strap", "pocket", "zipper"} <= set(parts_for("backpack"))
    assert parts_for("dog", ["hat", " scarf ", ""]) == ["hat", "scarf"]
    assert parts_for("dog", []) == []
    assert parts_for("nebula") == []
    assert all(parts and all(p == p.strip().lower() for p in parts) for parts in
               PART_LISTS.values())  # fmt: skip
