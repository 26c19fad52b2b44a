"""Evaluation prompts: DreamBench's two sets, users' files, fixed seeds, unpadded sharding."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from helpers import DREAMBENCH

from core.concept import ConceptSpec
from core.dreambench import DREAMBENCH_LIVE, DREAMBENCH_OBJECT, DREAMBENCH_SUBJECTS
from datamodules.generation_prompts import EvalPrompts, GenerationItems, ShardSampler
from datamodules.personalization import PersonalizationDataModule
from prompts.eval_sets import load_prompt_file, resolve_prompt_set

LISTING = DREAMBENCH / "prompts_and_classes.txt"


def published_prompt_lists() -> tuple[list[str], list[str]]:
    """The two lists as DreamBench publishes them, rewritten to our '{}' placeholder."""
    text = LISTING.read_text()
    objects, live = text.split("Live Subject Prompts")
    pattern = re.compile(r"'(a .*?)'\.format\(unique_token, class_token\)")
    convert = lambda body: [p.replace("{0} {1}", "{}") for p in pattern.findall(body)]  # noqa: E731
    return convert(objects), convert(live)


@pytest.mark.skipif(not LISTING.is_file(), reason="DreamBench data not present")
def test_prompt_sets_and_classes_are_dreambenchs() -> None:
    objects, live = published_prompt_lists()
    assert list(DREAMBENCH_OBJECT) == objects and len(objects) == 25
    assert list(DREAMBENCH_LIVE) == live and len(live) == 25
    for line in LISTING.read_text().split("Prompts")[0].splitlines():
        name, _, word = line.partition(",")
        if word and name != "subject_name":
            assert DREAMBENCH_SUBJECTS[name] == word
    assert len(DREAMBENCH_SUBJECTS) == 30


@pytest.mark.parametrize(
    ("class_word", "expected"),
    [("dog", "dreambench_live"), ("cat", "dreambench_live"), ("backpack", "dreambench_object"),
     ("stuffed animal", "dreambench_object"), ("toy", "dreambench_object")],
)  # fmt: skip
def test_dreambench_set_is_picked_by_class_word(class_word: str, expected: str) -> None:
    name, templates = resolve_prompt_set("dreambench", class_word)
    assert name == expected
    assert ("a {} wearing a santa hat" in templates) == (expected == "dreambench_live")


def test_user_prompt_file_skips_comments_and_blank_lines(tmp_path: Path) -> None:
    file = tmp_path / "prompts.txt"
    file.write_text("# my prompts\na {} on the moon\n\na {} in a box\n")
    assert load_prompt_file(file) == ["a {} on the moon", "a {} in a box"]
    assert resolve_prompt_set(str(file), "dog") == (
        str(file),
        ["a {} on the moon", "a {} in a box"],
    )


def test_prompt_file_without_placeholder_names_the_line(tmp_path: Path) -> None:
    file = tmp_path / "prompts.txt"
    file.write_text("a {} on the moon\na dog in a box\n")
    with pytest.raises(
        ValueError, match=r"Prompt 2 of .*'a dog in a box', has no concept placeholder"
    ):
        load_prompt_file(file)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_prompt_file(tmp_path / "missing.txt")


def test_datamodule_rejects_a_bad_prompt_file_at_construction(tmp_path: Path) -> None:
    file = tmp_path / "prompts.txt"
    file.write_text("a photo of a dog\n")
    with pytest.raises(ValueError, match="no concept placeholder"):
        PersonalizationDataModule(resolution=32, eval_prompts=EvalPrompts(source=str(file)))


def test_items_have_fixed_seeds_and_class_word_scoring_prompts() -> None:
    settings = EvalPrompts(images_per_prompt=3, seed=10)
    items = GenerationItems(["a {} on the moon", "a red {}"], ConceptSpec("<v1>", "dog"), settings)
    assert len(items) == 6
    assert items[4] == {
        "prompt": "a red <v1> dog",
        "score_prompt": "a red dog",
        "prompt_index": 1,
        "image_index": 1,
        "seed": 10 + 1 * 3 + 1,
    }
    assert [items[i]["seed"] for i in range(6)] == list(range(10, 16))


def test_shards_cover_every_item_once_without_padding() -> None:
    items = GenerationItems(
        ["a {}"] * 7, ConceptSpec("<v1>", "dog"), EvalPrompts(images_per_prompt=1)
    )
    shards = [list(ShardSampler(items, num_replicas=3, rank=r)) for r in range(3)]
    assert [len(s) for s in shards] == [3, 2, 2]
    assert sorted(i for s in shards for i in s) == list(range(7))


def test_eval_prompt_options_are_checked() -> None:
    with pytest.raises(ValueError, match="images_per_prompt"):
        EvalPrompts(images_per_prompt=0)
    with pytest.raises(ValueError, match="max_prompts"):
        EvalPrompts(max_prompts=0)
    assert len(EvalPrompts(max_prompts=3).templates("dog")[1]) == 3


def test_datamodule_loaders_and_references() -> None:
    data = PersonalizationDataModule(
        resolution=32,
        synthetic_num_images=3,
        eval_prompts=EvalPrompts(images_per_prompt=2, batch_size=4),
    )
    batches = list(data.test_dataloader())
    assert [len(b["prompt"]) for b in batches] == [4] * 12 + [2]  # 25 prompts x 2 images
    assert batches[0]["prompt"][0] == "a <v1> toy in the jungle"
    assert len(data.reference_images()) == 3
    assert data.eval_prompt_set == "dreambench_object"
