"""ACCORD's captions of uncaptioned photos: BLIP once per subject, templates, cache, fallback."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
from helpers import tiny_datamodule
from PIL import Image

from core.cache import cache_root
from datamodules.extras.captions import CAPTIONS_FILE, CaptionOptions, read_captions
from preparation import captioning
from preparation.captioning import caption_photos, caption_template, photos_manifest

CAPTION_KEYS = {"caption_full", "caption_concept", "caption_general", "caption_superclass"}


def photos(folder: Path, count: int = 3) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.new("RGB", (40, 40), (60 * i, 90, 200 - 50 * i)).save(folder / f"{i:02d}.png")
    return folder


@pytest.fixture
def fake_blip(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[int]:
    """generate_captions replaced by fixed captions (the list counts its calls), with a cache
    of the test's own."""
    monkeypatch.setenv("PERSONALIZE_CACHE", str(tmp_path / "cache"))
    calls: list[int] = []
    texts = ["a dog sitting on a wooden bench", "two dogs in the snow", "a man holding a leash"]

    def generate(images: list[Image.Image], captioner: str) -> list[str]:
        calls.append(len(images))
        return texts[: len(images)]

    monkeypatch.setattr(captioning, "generate_captions", generate)
    return calls


def test_the_class_noun_becomes_the_concept_placeholder() -> None:
    assert caption_template("a dog sitting on a bench", "dog") == ("a {} sitting on a bench", True)
    assert caption_template("two Dogs in the snow", "dog") == ("two {} in the snow", True)
    assert caption_template("a hotdog stand", "dog") == ("a hotdog stand, with a {}", False)
    template, named = caption_template("a {weird} caption.", "dog")
    assert not named and template.count("{}") == 1 and "{weird}" not in template


def test_captions_are_made_once_and_reused(fake_blip: list[int], tmp_path: Path) -> None:
    images = [Image.open(p).convert("RGB") for p in sorted(photos(tmp_path / "dog").iterdir())]
    names = ["00.png", "01.png", "02.png"]
    with pytest.warns(UserWarning, match="does not name the class 'dog'"):
        first = caption_photos(images, names, "dog", "tiny-blip-captioner")
    assert first == [
        "a {} sitting on a wooden bench",
        "two {} in the snow",
        "a man holding a leash, with a {}",
    ]
    assert caption_photos(images, names, "dog", "tiny-blip-captioner") == first
    assert fake_blip == [3]  # the model ran once
    # Another class word, captioner or photo is another manifest: captioned anew.
    with pytest.warns(UserWarning):
        caption_photos(images, names, "puppy", "tiny-blip-captioner")
    assert fake_blip == [3, 3]
    assert photos_manifest(images, "dog", "a") != photos_manifest(images, "dog", "b")
    assert photos_manifest(images, "dog", "a") != photos_manifest(images[::-1], "dog", "a")
    # The cache entry: the raw captions with their templates, and a captions.txt that
    # read_captions accepts beside the photos.
    entry = cache_root() / "captions" / photos_manifest(images, "dog", "tiny-blip-captioner")
    saved = json.loads((entry / "captions.json").read_text())
    assert [p["caption"] for p in saved["photos"]][0] == "a dog sitting on a wooden bench"
    copy = photos(tmp_path / "copy")
    (copy / CAPTIONS_FILE).write_text((entry / "captions.txt").read_text())
    assert read_captions(copy) == first


def test_the_datamodule_captions_uncaptioned_photos(fake_blip: list[int], tmp_path: Path) -> None:
    folder = photos(tmp_path / "dog")
    datamodule = tiny_datamodule(
        instance_data_dir=str(folder), class_word="dog",
        captions=CaptionOptions("tiny-blip-captioner"),
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        datamodule.request(CAPTION_KEYS, "test")
    batch = next(iter(datamodule.train_dataloader()))
    full = set(batch["caption_full"])
    assert full <= {
        "a <v1> dog sitting on a wooden bench",
        "two <v1> dog in the snow",
        "a man holding a leash, with a <v1> dog",
    }
    general = {"a sitting on a wooden bench", "two in the snow", "a man holding a leash, with a"}
    assert set(batch["caption_general"]) <= general
    assert fake_blip == [3]


def test_a_captions_file_wins_over_the_captioner(fake_blip: list[int], tmp_path: Path) -> None:
    folder = photos(tmp_path / "dog")
    (folder / CAPTIONS_FILE).write_text(
        "".join(f"{i:02d}.png: a {{}} on a red sofa\n" for i in range(3))
    )
    datamodule = tiny_datamodule(
        instance_data_dir=str(folder), class_word="dog",
        captions=CaptionOptions("tiny-blip-captioner"),
    )  # fmt: skip
    datamodule.request(CAPTION_KEYS, "test")
    batch = next(iter(datamodule.train_dataloader()))
    assert set(batch["caption_full"]) == {"a <v1> dog on a red sofa"}
    assert fake_blip == []


def test_without_a_captioner_the_prompts_stand_in_with_a_warning(tmp_path: Path) -> None:
    datamodule = tiny_datamodule(instance_data_dir=str(photos(tmp_path / "dog")), class_word="dog")
    with pytest.warns(UserWarning, match="captioner"):
        datamodule.request(CAPTION_KEYS, "test")
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["caption_full"] == batch["prompts"]


def test_the_tiny_blip_captioner_runs_offline(tmp_path: Path) -> None:
    """The real path: BlipForConditionalGeneration built tiny, loaded, generating text."""
    images = [Image.new("RGB", (40, 40), (200, 30, 30)), Image.new("RGB", (40, 40), (0, 0, 0))]
    captions = captioning.generate_captions(images, "tiny-blip-captioner")
    assert len(captions) == 2 and all(isinstance(c, str) for c in captions)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random captions rarely name the class
        templates = caption_photos(images, ["a.png", "b.png"], "toy", "tiny-blip-captioner")
    assert all(t.count("{}") == 1 for t in templates)
