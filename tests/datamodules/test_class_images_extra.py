"""Class images as a batch extra: options, per-sample choice, resolution and flips, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import CLASS_PROMPT as PROMPT
from helpers import tiny_datamodule, write_class_folder
from PIL import Image

from core.images import to_tensor
from datamodules.extras import extra_for
from datamodules.extras.class_images import ClassImageOptions, ClassImages


def test_the_extra_provides_the_prior_keys() -> None:
    assert extra_for("class_pixel_values") is ClassImages
    assert extra_for("class_prompts") is ClassImages


def test_each_sample_gets_one_class_image_chosen_by_its_rng(tmp_path: Path) -> None:
    folder = write_class_folder(tmp_path / "cls")
    plain = tiny_datamodule()
    dm = tiny_datamodule(class_images=ClassImageOptions(folder=str(folder), prompt=PROMPT, count=3))
    dm.request({"class_pixel_values", "class_prompts"}, "test")
    dataset, plain_dataset = dm.train_dataloader().dataset, plain.train_dataloader().dataset
    seen_images, seen_flips = set(), set()
    for i in range(24):
        sample = dataset[i]
        assert sample["class_prompts"] == PROMPT
        pixels = sample["class_pixel_values"]
        assert pixels.shape == (3, 32, 32)  # the instance resolution, centre crop
        _, index, flipped = sample["class_cache_key"].split("/")
        seen_images.add(int(index))
        seen_flips.add(int(flipped))
        # Rebuild the expected pixels by hand: shorter side to 32, centre crop, maybe flip.
        image = Image.open(folder / f"img-{index}.png").convert("RGB").resize((38, 32), 3)
        expected = to_tensor(image.crop((3, 0, 35, 32)))
        assert torch.equal(pixels, expected.flip(-1) if flipped == "1" else expected)
        # The extra draws from its own stream: the instance sample is what it was without it.
        assert torch.equal(sample["pixel_values"], plain_dataset[i]["pixel_values"])
        assert dataset[i]["class_cache_key"] == sample["class_cache_key"]  # deterministic
    assert seen_images == {0, 1, 2} and seen_flips == {0, 1}
    batch = next(iter(dm.train_dataloader()))
    assert batch["class_pixel_values"].shape == (2, 3, 32, 32)
    assert batch["class_prompts"] == [PROMPT, PROMPT]


def test_only_the_first_count_class_images_are_used(tmp_path: Path) -> None:
    folder = write_class_folder(tmp_path / "cls", count=3)
    dm = tiny_datamodule(class_images=ClassImageOptions(folder=str(folder), prompt=PROMPT, count=2))
    dm.request({"class_pixel_values"}, "test")
    dataset = dm.train_dataloader().dataset
    assert {dataset[i]["class_cache_key"].split("/")[1] for i in range(30)} == {"0", "1"}


def test_random_crop_turns_off_class_latent_caching(tmp_path: Path) -> None:
    folder = write_class_folder(tmp_path / "cls")
    dm = tiny_datamodule(
        class_images=ClassImageOptions(folder=str(folder), prompt=PROMPT, count=3), random_crop=True
    )
    dm.request({"class_pixel_values"}, "test")
    assert dm.train_dataloader().dataset[0]["class_cache_key"] == ""


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"folder": "x", "prompt": "  "}, "does not name the class word"),
        ({"prompt": "a photo of a cat"}, "does not name the class word 'toy'"),
        ({"prompt": "a photo of toys"}, "does not name the class word"),  # whole words
        ({"prompt": PROMPT, "count": 0}, "class_images.count must be >= 1"),
        ({"prompt": PROMPT, "generation_steps": 0}, "class_images.generation_steps"),
    ],
)
def test_bad_options_fail_when_the_datamodule_is_built(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tiny_datamodule(class_images=ClassImageOptions(**options))


def test_class_prompt_and_folder_follow_the_class_word(tmp_path: Path) -> None:
    photos = write_class_folder(tmp_path / "dog", count=3)
    dm = tiny_datamodule(
        instance_data_dir=str(photos), class_word="teddy bear",
        class_images=ClassImageOptions(folder=str(tmp_path / "class_images" / "{class_word}")),
    )  # fmt: skip
    assert dm.class_images.prompt == "a photo of a teddy bear"
    assert dm.class_images.folder == str(tmp_path / "class_images" / "teddy_bear")
    # A prompt of its own is kept when it names the class (any concept's class word).
    own = tiny_datamodule(class_images=ClassImageOptions(prompt="a TOY on a table"))
    assert own.class_images.prompt == "a TOY on a table"


def test_class_folder_that_is_a_file_fails_early(tmp_path: Path) -> None:
    (tmp_path / "file.png").write_bytes(b"x")
    with pytest.raises(ValueError, match="is a file"):
        tiny_datamodule(class_images=ClassImageOptions(str(tmp_path / "file.png"), PROMPT))


def test_request_errors_name_the_missing_option_and_the_bad_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="Prior preservation needs .*class_images.folder"):
        tiny_datamodule().request({"class_pixel_values"}, "Prior preservation")
    folder = write_class_folder(tmp_path / "cls", count=2)
    short = tiny_datamodule(class_images=ClassImageOptions(str(folder), PROMPT, count=3))
    with pytest.raises(ValueError, match="holds 2 images, data.init_args.class_images.count is 3"):
        short.request({"class_pixel_values"}, "test")
    (folder / "img-1.png").write_bytes(b"not a png")
    broken = tiny_datamodule(class_images=ClassImageOptions(str(folder), PROMPT, count=2))
    with pytest.raises(ValueError, match="img-1.png"):
        broken.request({"class_pixel_values"}, "test")
