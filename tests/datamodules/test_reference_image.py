"""Several subjects under one token, and the reference photo each sample brings."""

from __future__ import annotations

import random

import pytest
import torch
from helpers import tiny_datamodule
from PIL import Image

from core.concept import ConceptSpec
from core.images import resize_and_crop, to_tensor
from datamodules.extras import extra_for
from datamodules.extras.reference_image import ReferenceImage
from datamodules.personalization import ConceptData, PersonalizationDataModule


def _three_subjects(**overrides: object) -> PersonalizationDataModule:
    subjects = [ConceptData("<v1>", "robot"), ConceptData("<v1>", "doll")]
    return tiny_datamodule(shared_tokens=True, additional_concepts=subjects, **overrides)


def _candidates(images: list[Image.Image], resolution: int) -> list[torch.Tensor]:
    """Every photo at the DataModule's size, unflipped and flipped."""
    rng = random.Random(0)
    squares = [resize_and_crop(image, resolution, False, rng) for image in images]
    flipped = [s.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for s in squares]
    return [to_tensor(s) for s in squares] + [to_tensor(f) for f in flipped]


def test_subjects_share_a_token_only_when_asked() -> None:
    with pytest.raises(ValueError, match="must differ.*shared_tokens: true"):
        tiny_datamodule(additional_concepts=[ConceptData("<v1>", "robot")])
    datamodule = _three_subjects()
    assert len(datamodule.images) == 3
    # The model gets the token once (the first subject's spec) ...
    assert datamodule.concepts == [ConceptSpec("<v1>", "toy")]
    # ... while each subject's prompts keep its own class word.
    dataset = datamodule.train_dataloader().dataset
    phrases = {dataset[i]["concept_index"]: dataset[i]["prompts"] for i in range(15)}
    assert "<v1> toy" in phrases[0] and "<v1> robot" in phrases[1] and "<v1> doll" in phrases[2]


def test_reference_is_another_photo_of_the_same_subject() -> None:
    assert extra_for("reference_pixel_values") is ReferenceImage
    datamodule = _three_subjects()
    datamodule.request({"reference_pixel_values"}, "test")
    dataset = datamodule.train_dataloader().dataset
    assert "image_index" not in dataset[0]  # not a batch key
    for index in range(len(dataset)):
        sample = dataset[index]
        subject, photo = dataset.items[index % len(dataset.items)]
        reference = sample["reference_pixel_values"]
        assert reference.shape == (3, 32, 32)
        pool = _candidates(datamodule.images[subject], 32)
        matches = {i % 5 for i, c in enumerate(pool) if torch.equal(c, reference)}
        assert len(matches) == 1 and photo not in matches, (index, matches, photo)
    # Deterministic: the same index gives the same reference.
    assert torch.equal(dataset[7]["reference_pixel_values"], dataset[7]["reference_pixel_values"])


def test_choice_covers_every_other_photo() -> None:
    extra = ReferenceImage([[Image.new("RGB", (8, 8))] * 4], resolution=8, flip_probability=0)
    rng = random.Random(0)
    chosen = {extra.choose(0, 2, rng) for _ in range(200)}
    assert chosen == {0, 1, 3}
    single = ReferenceImage([[Image.new("RGB", (8, 8))]], resolution=8, flip_probability=0)
    assert single.choose(0, 0, rng) == 0  # a one-photo subject is its own reference
