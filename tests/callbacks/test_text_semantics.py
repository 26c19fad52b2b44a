"""TextSemantics: sim1 / sim2 against the paper's cosines, computed independently."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from callbacks.context_prompts import check_context_prompts
from callbacks.text_semantics import TextSemantics, sim1_sim2
from core.concept import ConceptSpec
from models import TextualInversion


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_sim1_sim2_on_constructed_states() -> None:
    rng = np.random.default_rng(0)
    with_concept, without_concept = rng.normal(size=(9, 5)), rng.normal(size=(9, 5))
    # Concept of two vectors at 2-3, context word of two tokens at 5-6 (4-5 without the concept).
    concept = with_concept[[2, 3]].mean(axis=0)
    context = with_concept[[5, 6]].mean(axis=0)
    context_alone = without_concept[[4, 5]].mean(axis=0)
    sim1, sim2 = sim1_sim2(
        torch.tensor(with_concept), torch.tensor(without_concept), [2, 3], [5, 6], [4, 5]
    )
    assert sim1 == pytest.approx(_cos(concept, context), abs=1e-6)
    assert sim2 == pytest.approx(_cos(context, context_alone), abs=1e-6)
    # Identical context features without the concept: sim2 is exactly 1.
    same = torch.tensor(with_concept)
    assert sim1_sim2(same, same, [2], [5], [5])[1] == pytest.approx(1.0)


def test_measure_matches_a_hand_computation_on_the_module(tiny_sd_path: object) -> None:
    module = TextualInversion(concepts=[ConceptSpec("<v1>", "toy")])
    with torch.no_grad():
        vectors = module.concept_tokens.embedding.vectors
        vectors.copy_(torch.randn(vectors.shape, generator=torch.Generator().manual_seed(0)))
        callback = TextSemantics(prompts={"a {} on the beach": "beach"})
        measured = callback.measure(SimpleNamespace(loggers=[]), module, step=0)
        encoding = module.encode_text(["a <v1> toy on the beach", "a toy on the beach"])
    states = encoding.hidden_states.double().numpy()
    ids = encoding.input_ids.tolist()
    concept_id = module.tokenizer.convert_tokens_to_ids("<v1>")
    (beach_id,) = module.tokenizer("beach", add_special_tokens=False).input_ids
    concept = states[0, ids[0].index(concept_id)]
    context = states[0, ids[0].index(beach_id)]
    context_alone = states[1, ids[1].index(beach_id)]
    assert measured["text/sim1"] == pytest.approx(_cos(concept, context), abs=1e-5)
    assert measured["text/sim2"] == pytest.approx(_cos(context, context_alone), abs=1e-5)


def test_default_prompt_set_averages_over_all_prompts(tiny_sd_path: object) -> None:
    module = TextualInversion(concepts=[ConceptSpec("<v1>", "toy")])
    callback = TextSemantics()
    assert len(callback.prompts) == 10
    with torch.no_grad():
        together = callback.measure(SimpleNamespace(loggers=[]), module, step=0)
        singles = [
            TextSemantics(prompts={t: w}).measure(SimpleNamespace(loggers=[]), module, step=0)
            for t, w in callback.prompts.items()
        ]
    for key in ("text/sim1", "text/sim2"):
        assert together[key] == pytest.approx(np.mean([s[key] for s in singles]), abs=1e-5)


def test_bad_prompts_fail_with_a_fix() -> None:
    with pytest.raises(ValueError, match="not a whole word"):
        check_context_prompts({"a {} on the beach": "jungle"})
    with pytest.raises(ValueError, match="exactly one"):
        TextSemantics(prompts={"a dog on the beach": "beach"})
