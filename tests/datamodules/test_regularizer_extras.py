"""The batch data of SPL/SuDe (superclass prompts) and ACCORD (caption parts)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import tiny_datamodule, tiny_trainer
from PIL import Image

from core.concept import ConceptSpec
from datamodules.extras.captions import CAPTIONS_FILE, read_captions, split_caption
from datamodules.extras.superclass import superclass_prompt
from datamodules.personalization import ConceptData
from losses.dd_loss import DenoisingDecoupleLoss
from losses.pd_loss import PriorDecoupleLoss
from models import CustomDiffusion

DOG = ConceptSpec("<v1>", "dog")
CAPTION_KEYS = {"caption_full", "caption_concept", "caption_general", "caption_superclass"}


def photo_folder(root: Path, names: list[str], captions: str | None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        Image.new("RGB", (40, 40), (40 * i, 90, 200 - 40 * i)).save(root / name)
    if captions is not None:
        (root / CAPTIONS_FILE).write_text(captions)
    return root


# ----------------------------------------------------------------------- superclass prompts


def test_superclass_prompt_removes_only_the_concept_tokens() -> None:
    tokens = ["<v1>", "<v2>"]
    assert superclass_prompt("a photo of a <v1> dog", DOG, tokens) == "a photo of a dog"
    assert superclass_prompt("<v1> dog and <v2> cat", DOG, tokens) == "dog and cat"
    assert superclass_prompt("a <v1> dog, <v1>_1 stays", DOG, tokens) == "a dog, <v1>_1 stays"


def test_a_prompt_without_its_class_word_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"lacks the class word 'dog'.*'<v1> dog'"):
        superclass_prompt("a photo of a <v1> doggo", DOG, ["<v1>"])


def test_superclass_prompts_reach_the_batch() -> None:
    datamodule = tiny_datamodule(rescale_augmentation=True)
    datamodule.request({"superclass_prompts"}, "test")
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["superclass_prompts"] == [p.replace("<v1> ", "") for p in batch["prompts"]]


# --------------------------------------------------------------------------------- captions


def test_split_caption_into_full_concept_and_general() -> None:
    parts = split_caption("a {} on a  bench", DOG)
    assert parts.full == "a <v1> dog on a bench"
    assert (parts.concept, parts.general, parts.superclass) == ("<v1> dog", "a on a bench", "dog")
    assert split_caption("{}", DOG).general == ""


def test_captions_file_is_read_in_the_photos_order(tmp_path: Path) -> None:
    text = "# captions\n\n01.png: a {} on grass\n00.png: a {}: asleep on a sofa\n"
    folder = photo_folder(tmp_path, ["00.png", "01.png"], text)
    assert read_captions(folder) == ["a {}: asleep on a sofa", "a {} on grass"]
    assert read_captions(photo_folder(tmp_path / "bare", ["00.png"], None)) is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("00.png: a {} on grass\n", r"no caption for \['01.png'\]"),
        ("00.png: a {}\n01.png: a {}\n02.png: a {}\n", r"not photos there: \['02.png'\]"),
        ("00.png: a dog on grass\n01.png: a {}\n", "exactly once"),
        ("00.png: a {}\n00.png: a {}\n01.png: a {}\n", "second caption"),
        ("a {} on grass\n", "expected '<image file name>: <caption"),
    ],
)
def test_bad_captions_file_is_a_clear_error(tmp_path: Path, text: str, message: str) -> None:
    folder = photo_folder(tmp_path, ["00.png", "01.png"], text)
    with pytest.raises(ValueError, match=message):
        read_captions(folder)


def test_each_sample_gets_its_photos_caption(tmp_path: Path) -> None:
    folder = photo_folder(tmp_path, ["a.png", "b.png"], "a.png: a {} on grass\nb.png: {} in snow")
    datamodule = tiny_datamodule(instance_data_dir=str(folder), class_word="dog")
    datamodule.request(CAPTION_KEYS, "test")
    dataset = datamodule.train_dataloader().dataset
    expected = {"0": ("a <v1> dog on grass", "a on grass"), "1": ("<v1> dog in snow", "in snow")}
    for index in range(len(dataset)):
        sample = dataset[index]
        image_index = sample["cache_key"].split("/")[1]  # "concept/image/flip"
        assert (sample["caption_full"], sample["caption_general"]) == expected[image_index]
        assert (sample["caption_concept"], sample["caption_superclass"]) == ("<v1> dog", "dog")
        assert "image_index" not in sample


def test_without_a_captions_file_the_prompt_is_the_caption() -> None:
    datamodule = tiny_datamodule(
        rescale_augmentation=True, additional_concepts=[ConceptData("<v2>", "toy")]
    )
    datamodule.request(CAPTION_KEYS, "test")
    for sample in (datamodule.train_dataloader().dataset[i] for i in range(10)):
        phrase = f"<v{sample['concept_index'] + 1}> toy"
        assert sample["caption_full"] == sample["prompts"]
        assert sample["caption_concept"] == phrase
        assert sample["caption_general"] == " ".join(sample["prompts"].replace(phrase, "").split())


def test_bad_captions_stop_training_before_the_first_step(tmp_path: Path) -> None:
    folder = photo_folder(tmp_path / "photos", ["00.png", "01.png"], "00.png: a {} on grass\n")
    datamodule = tiny_datamodule(instance_data_dir=str(folder), class_word="dog")
    module = CustomDiffusion(
        concepts=datamodule.concepts, regularizers=[DenoisingDecoupleLoss(), PriorDecoupleLoss()]
    )
    before = module.concept_tokens.embedding.vectors.detach().clone()
    with pytest.raises(ValueError, match=r"Regularizer 'dd' needs batch data.*no caption for"):
        tiny_trainer(tmp_path, max_steps=2).fit(module, datamodule=datamodule)
    assert torch.equal(module.concept_tokens.embedding.vectors, before)


# ----------------------------------------------------------------------- possible values


@pytest.mark.parametrize("with_captions", [False, True])
def test_possible_values_hold_every_value_training_draws(
    tmp_path: Path, with_captions: bool
) -> None:
    """What losses encode up front covers every prompt, superclass prompt and caption part
    the training batches hold (rescale words, two concepts, a captions file or not)."""
    photos = None
    if with_captions:
        captions = "00.png: a {} on grass\n01.png: a {} next to a red ball\n"
        photos = str(photo_folder(tmp_path / "photos", ["00.png", "01.png"], captions))
    datamodule = tiny_datamodule(
        rescale_augmentation=True,
        instance_data_dir=photos,
        class_word="toy",
        additional_concepts=[ConceptData("<v2>", "toy")],
        repeats=40,
    )
    keys = ["prompts", "superclass_prompts", *sorted(CAPTION_KEYS)]
    datamodule.request(set(keys), "test")
    possible = {key: datamodule.possible_values(key) for key in keys}
    drawn: dict[str, set[str]] = {key: set() for key in keys}
    for batch in datamodule.train_dataloader():
        for key in keys:
            drawn[key] |= set(batch[key])
    for key in keys:
        values = possible[key]
        assert values is not None and len(values) == len(set(values)), key
        assert drawn[key] <= set(values), (key, sorted(drawn[key] - set(values))[:3])
    assert len(drawn["prompts"]) > 20  # many drawn, all foreseen
    if with_captions:
        assert "a on grass" in possible["caption_general"]


def test_possible_values_are_unknown_for_drawn_or_unrequested_keys() -> None:
    datamodule = tiny_datamodule()
    assert datamodule.possible_values("superclass_prompts") is None  # not requested
    datamodule.request({"context_prompts", "superclass_prompts"}, "test")
    assert datamodule.possible_values("context_prompts") is None  # a corpus, drawn at random
    prompts = datamodule.possible_values("prompts")
    assert prompts is not None and "a photo of a <v1> toy" in prompts
    assert datamodule.possible_values("superclass_prompts") == [
        p.replace("<v1> ", "") for p in prompts
    ]
