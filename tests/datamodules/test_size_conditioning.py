"""SDXL's size conditioning: each sample's original size and where its crop came from."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from helpers import tiny_datamodule, write_class_folder

from core.images import resize_short_side


def test_centre_crop_of_a_wide_photo(tmp_path: Path) -> None:
    folder = write_class_folder(tmp_path / "photos", count=2, size=(48, 40))  # width, height
    datamodule = tiny_datamodule(
        instance_data_dir=str(folder), class_word="toy", flip_probability=0.0
    )
    datamodule.request({"original_size", "crop_top_left"}, "SDXL")
    sample = datamodule.train_dataloader().dataset[0]
    scaled = resize_short_side(datamodule.images[0][0], datamodule.resolution)
    assert torch.equal(sample["original_size"], torch.tensor([40, 48]))  # height, width
    left = (scaled.size[0] - datamodule.resolution) // 2
    assert torch.equal(sample["crop_top_left"], torch.tensor([0, left]))
    assert "image_geometry" not in sample and "image_index" not in sample


def test_a_flipped_crop_is_measured_in_the_mirrored_photo(tmp_path: Path) -> None:
    folder = write_class_folder(tmp_path / "photos", count=1, size=(64, 32))
    datamodule = tiny_datamodule(
        instance_data_dir=str(folder), class_word="toy", flip_probability=1.0, random_crop=True
    )
    datamodule.request({"original_size", "crop_top_left"}, "SDXL")
    dataset = datamodule.train_dataloader().dataset
    for index in range(4):
        sample = dataset[index]
        top, left = sample["crop_top_left"].tolist()
        spare = 64 * datamodule.resolution // 32 - datamodule.resolution
        assert top == 0 and 0 <= left <= spare
        # The crop's pixels are the mirrored photo's at (top, left).
        scaled = resize_short_side(datamodule.images[0][0], datamodule.resolution)
        mirrored = scaled.transpose(0)  # FLIP_LEFT_RIGHT
        window = mirrored.crop(
            (left, top, left + datamodule.resolution, top + datamodule.resolution)
        )
        expected = torch.from_numpy(np.asarray(window, dtype=np.float32) / 127.5 - 1)
        torch.testing.assert_close(sample["pixel_values"], expected.permute(2, 0, 1))


def test_the_base_sample_is_unchanged_by_the_extra(tmp_path: Path) -> None:
    folder = write_class_folder(tmp_path / "photos", count=2, size=(48, 40))
    plain = tiny_datamodule(instance_data_dir=str(folder), class_word="toy", random_crop=True)
    sized = tiny_datamodule(instance_data_dir=str(folder), class_word="toy", random_crop=True)
    sized.request({"original_size", "crop_top_left"}, "SDXL")
    for index in range(3):
        a, b = plain.train_dataloader().dataset[index], sized.train_dataloader().dataset[index]
        assert torch.equal(a["pixel_values"], b["pixel_values"]) and a["prompts"] == b["prompts"]
