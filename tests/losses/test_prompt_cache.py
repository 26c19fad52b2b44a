"""The frozen-prompt cache: same encodings as a fresh pass, bypassed when they could change,
prefilled from the DataModule so steps find every constant text cached."""

from __future__ import annotations

import torch
from helpers import tiny_datamodule

from core.concept import ConceptSpec
from losses.pd_loss import PriorDecoupleLoss
from losses.prompt_cache import FrozenPromptCache, possible_texts
from losses.spl import SemanticPreservationLoss
from models import CustomDiffusion, DreamBooth

TOY = [ConceptSpec("<v1>", "toy")]


def test_cached_encodings_are_those_of_a_fresh_pass_and_only_misses_are_encoded() -> None:
    module = CustomDiffusion(concepts=TOY)
    cache = FrozenPromptCache()
    first = ["a photo of a toy", "a toy on a bench"]
    assert cache.missing(module, first + first) == first
    encoded = cache.encode(module, first)
    assert cache.missing(module, ["a toy on a bench", "toy"]) == ["toy"]
    again = cache.encode(module, ["toy", *first])  # "toy" given by the caller, as the fold does
    fresh = module.encode_text(["toy", *first])
    torch.testing.assert_close(again.hidden_states, fresh.hidden_states, rtol=1e-5, atol=1e-6)
    assert torch.equal(again.input_ids, fresh.input_ids)
    assert not encoded.hidden_states.requires_grad
    calls: list[int] = []
    module.text_encoder.register_forward_hook(lambda _m, a, _o: calls.append(len(a[0])))
    cache.encode(module, first)
    assert calls == []  # all hits


def test_prompts_with_a_concept_token_or_a_training_text_encoder_bypass_it() -> None:
    cache = FrozenPromptCache()
    module = CustomDiffusion(concepts=TOY)
    assert cache.missing(module, ["a <v1> toy", "a toy"]) == ["a <v1> toy", "a toy"]
    cache.encode(module, ["a <v1> toy"])
    assert cache.missing(module, ["a <v1> toy"]) == ["a <v1> toy"]  # never kept
    tuned = DreamBooth(concepts=TOY, train_text_encoder=True)
    cache.prefill(tuned, ["a toy", "a dog"])
    cache.encode(tuned, ["a toy"])
    assert cache.missing(tuned, ["a toy"]) == ["a toy"]  # the encoder trains: nothing kept


def test_prefill_leaves_no_miss_for_the_steps() -> None:
    """After the prefill (what on_train_start does), no step asks for a target text."""
    datamodule = tiny_datamodule(rescale_augmentation=True, repeats=20)
    spl, pd = SemanticPreservationLoss(), PriorDecoupleLoss()
    module = CustomDiffusion(concepts=datamodule.concepts, regularizers=[spl, pd])
    for regularizer in (spl, pd):
        regularizer.prepare(module)
    module.attach_datamodule(datamodule)
    expected = possible_texts(datamodule, ["superclass_prompts"])
    assert expected is not None and len(expected) > 20
    module.prefill_regularizers(datamodule)
    assert spl.cache.missing(module, expected) == []
    for batch in datamodule.train_dataloader():
        assert spl.text_requests(batch, module) == []
        assert len(pd.text_requests(batch, module)) == 1  # the concept phrases only
    # Prefilled entries are what a fresh pass gives.
    some = expected[:5]
    torch.testing.assert_close(
        spl.cache.encode(module, some).hidden_states,
        module.encode_text(some).hidden_states,
        rtol=1e-5,
        atol=1e-6,
    )


def test_possible_texts_is_none_when_any_key_is_unknown() -> None:
    datamodule = tiny_datamodule()
    datamodule.request({"superclass_prompts", "context_prompts"}, "test")
    superclass = datamodule.possible_values("superclass_prompts")
    assert superclass is not None and "a photo of a toy" in superclass
    assert possible_texts(datamodule, ["superclass_prompts"], also=("",)) == [*superclass, ""]
    assert possible_texts(datamodule, ["superclass_prompts", "context_prompts"]) is None
    assert possible_texts(object(), ["superclass_prompts"]) is None


def test_a_training_second_text_encoder_bypasses_it(tiny_sdxl_path) -> None:
    # SDXL: the cache must see a trainable weight in either encoder, not only the first.
    module = CustomDiffusion(pretrained_model_name_or_path=str(tiny_sdxl_path), concepts=TOY)
    cache = FrozenPromptCache()
    cache.encode(module, ["a toy"])
    assert cache.missing(module, ["a toy"]) == []
    module.text_encoder_2.text_model.final_layer_norm.weight.requires_grad_(True)
    fresh = FrozenPromptCache()
    fresh.encode(module, ["a toy"])
    assert fresh.missing(module, ["a toy"]) == ["a toy"]
