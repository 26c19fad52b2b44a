"""The context-rich prompt set: generator, user files, categories, the batch extra, the corpus."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import tiny_datamodule

from datamodules.context_corpus import ContextCorpusDataModule
from datamodules.extras.context_prompts import ContextPromptOptions, training_templates
from prompts.context import (
    CATEGORIES,
    category_of,
    generate_context_templates,
    is_held_out,
    read_prompt_file,
    split_held_out,
)


@pytest.mark.parametrize("category", CATEGORIES)
def test_generator_gives_10k_distinct_prompts_with_the_concept_deterministically(
    category: str,
) -> None:
    templates = generate_context_templates(category, 10_000, seed=0)
    assert len(templates) == len(set(templates)) == 10_000
    assert all(t.count("{}") == 1 and t.count("{") == 1 for t in templates)
    filled = [t.format("<v1> dog") for t in templates]
    assert len(set(filled)) == 10_000
    assert all("<v1> dog" in prompt for prompt in filled)
    assert generate_context_templates(category, 10_000, seed=0) == templates
    other = generate_context_templates(category, 10_000, seed=1)
    assert other != templates and len(set(other) - set(templates)) > 1_000


def test_categories_differ_in_their_contexts() -> None:
    living = " ".join(generate_context_templates("living", 2_000))
    objects = " ".join(generate_context_templates("object", 2_000))
    assert "wearing" in living and "wearing" not in objects  # clothing is for living subjects
    assert "countertop" in objects or "table" in objects


def test_held_out_share_is_fixed_and_disjoint() -> None:
    templates = generate_context_templates("object", 4_000)
    train, held = split_held_out(templates)
    assert not set(train) & set(held) and len(train) + len(held) == len(templates)
    assert 0.02 < len(held) / len(templates) < 0.09
    assert all(is_held_out(t) for t in held)
    # The share depends on the text only, so a pool drawn with another seed never trains on it.
    assert not set(training_templates("object", 3)) & set(held)


@pytest.mark.parametrize(
    ("class_word", "category"),
    [
        ("dog", "living"),
        ("Cat", "living"),
        ("golden retriever", "living"),
        ("teapot", "object"),
        ("teddy bear", "object"),
        ("stuffed animal", "object"),
        ("toy", "object"),
        ("backpack", "object"),
    ],
)
def test_category_follows_the_class_word(class_word: str, category: str) -> None:
    assert category_of(class_word) == category


def test_living_word_list_is_overridable() -> None:
    assert category_of("axolotl") == "object"
    assert category_of("axolotl", living_classes=["axolotl"]) == "living"


def test_prompt_file_is_read_and_a_line_without_placeholder_is_named(tmp_path: Path) -> None:
    good = tmp_path / "good.txt"
    good.write_text("# my prompts\na {} on the moon\n\n  a {} in the rain  \n")
    assert read_prompt_file(good) == ["a {} on the moon", "a {} in the rain"]
    bad = tmp_path / "bad.txt"
    bad.write_text("a {} on the moon\na dog in the rain\n")
    with pytest.raises(ValueError, match=r"bad.txt:2: 'a dog in the rain' needs .*\{\}"):
        read_prompt_file(bad)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_prompt_file(tmp_path / "missing.txt")


def test_extra_adds_a_rich_prompt_with_each_samples_concept_phrase(tmp_path: Path) -> None:
    datamodule = tiny_datamodule()
    datamodule.request({"context_prompts"}, "test")
    dataset = datamodule.train_dataloader().dataset
    prompts = [dataset[i]["context_prompts"] for i in range(len(dataset))]
    assert all("<v1> toy" in p for p in prompts)
    assert len(set(prompts)) > len(prompts) // 2
    assert prompts == [dataset[i]["context_prompts"] for i in range(len(dataset))]
    # toy -> object contexts; a file replaces the generated set.
    assert not any("wearing" in p for p in prompts)
    file = tmp_path / "mine.txt"
    file.write_text("a {} at the zoo\n")
    from_file = tiny_datamodule(context_prompts=ContextPromptOptions(file=str(file)))
    from_file.request({"context_prompts"}, "test")
    assert from_file.train_dataloader().dataset[0]["context_prompts"] == "a <v1> toy at the zoo"


def test_bad_category_is_an_error_when_the_options_are_read() -> None:
    with pytest.raises(ValueError, match="Unknown prompt category 'plant'"):
        tiny_datamodule(context_prompts=ContextPromptOptions(category="plant"))


def test_corpus_fills_subjects_and_validates_on_held_out_prompts() -> None:
    corpus = ContextCorpusDataModule(prompts_per_category=500, val_prompts=16, batch_size=4)
    train = [corpus.train_items[i][0] for i in range(len(corpus.train_items))]
    assert not any(is_held_out(t) for t in train)
    assert all(is_held_out(t) for t, _ in corpus.val_items) and len(corpus.val_items) == 16
    batch = next(iter(corpus.train_dataloader()))
    assert len(batch["prompts"]) == 4
    assert all("{}" not in p and "<v1>" not in p for p in batch["prompts"])
    assert corpus.concepts == []
