"""Multi-concept evaluation prompts: "{i}" is concept i, scored with class words, checked early."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.concept import ConceptSpec
from datamodules.generation_prompts import EvalPrompts, GenerationItems
from datamodules.personalization import ConceptData, PersonalizationDataModule
from prompts.eval_sets import load_prompt_file, resolve_prompt_set
from prompts.multi_concept import (
    MULTI_CONCEPT_PROMPTS,
    named_concepts,
    placeholder_indices,
)

DOG, CAT = ConceptSpec("<v1>", "dog"), ConceptSpec("<v2>", "cat")


def test_placeholders_fill_by_index_and_score_with_class_words() -> None:
    settings = EvalPrompts(images_per_prompt=2, seed=5)
    items = GenerationItems(["a {1} in front of a {0}", "a {0} on the beach"], [DOG, CAT], settings)
    assert len(items) == 4
    assert items[1] == {
        "prompt": "a <v2> cat in front of a <v1> dog",
        "score_prompt": "a cat in front of a dog",
        "prompt_index": 0,
        "image_index": 1,
        "seed": 6,
        "concepts": "0 1",
    }
    # A template may name one concept only; the item says which.
    assert items[2]["prompt"] == "a <v1> dog on the beach" and items[2]["concepts"] == "0"


def test_single_concept_items_are_unchanged_with_several_concepts() -> None:
    items = GenerationItems(["a red {}"], [DOG, CAT], EvalPrompts(images_per_prompt=1))
    assert items[0] == {
        "prompt": "a red <v1> dog",
        "score_prompt": "a red dog",
        "prompt_index": 0,
        "image_index": 0,
        "seed": 0,
    }


def test_more_placeholders_than_concepts_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"placeholder '\{1\}', so they need 2 concepts.*has 1"):
        GenerationItems(["a {0} and a {1}"], DOG, EvalPrompts())
    with pytest.raises(ValueError, match="need 2 concepts, but the run has 1"):
        PersonalizationDataModule(resolution=32, eval_prompts=EvalPrompts(source="multi"))


def test_multi_set_names_two_concepts_and_the_datamodule_fills_them() -> None:
    name, templates = resolve_prompt_set("multi", "dog")
    assert name == "multi" and templates == list(MULTI_CONCEPT_PROMPTS)
    assert 10 <= len(templates) <= 20
    assert all(placeholder_indices(t) == [0, 1] for t in templates)
    data = PersonalizationDataModule(
        resolution=32,
        synthetic_num_images=2,
        additional_concepts=[ConceptData("<v2>")],
        eval_prompts=EvalPrompts(source="multi", images_per_prompt=1, max_prompts=3),
    )
    assert data.eval_concepts == [0, 1]
    (batch,) = list(data.test_dataloader())
    assert batch["prompt"][0] == "a <v1> toy and a <v2> toy in the jungle"
    assert batch["score_prompt"][0] == "a toy and a toy in the jungle"
    assert batch["concepts"] == ["0 1"] * 3
    # Several concepts with the default set: still the first concept's DreamBench prompts.
    default = PersonalizationDataModule(resolution=32, additional_concepts=[ConceptData("<v2>")])
    assert default.eval_concepts is None and default.eval_prompt_set == "dreambench_object"


def test_multi_concept_prompt_file(tmp_path: Path) -> None:
    file = tmp_path / "pairs.txt"
    file.write_text("# pairs\na {0} next to a {1}\n\n{1} chasing {0} in a park\n")
    assert load_prompt_file(file) == ["a {0} next to a {1}", "{1} chasing {0} in a park"]
    assert named_concepts(load_prompt_file(file)) == [0, 1]
    mixed = tmp_path / "mixed.txt"
    mixed.write_text("a {0} next to a {1}\na {} on the moon\n")
    with pytest.raises(ValueError, match=r"Prompt 2 of .*must mark every concept by its index"):
        load_prompt_file(mixed)
    spec = tmp_path / "spec.txt"
    spec.write_text("a {0!r} next to a {1}\n")
    with pytest.raises(ValueError, match="without format specs"):
        load_prompt_file(spec)
    assert named_concepts(["a {} on the moon"]) is None
