"""Text requests: regularizers' text folded into the step's one text-encoder call.

The folded call must give each request what its own call would (so the losses do not change),
hand back targets detached, keep concept rows in batch order (VisualEncoder), and really be
one call; baselines with their own text path (XTI) encode requests one by one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from baseline_checks import assert_resume_is_exact
from helpers import optimizer_with_lr, tiny_datamodule

from core.concept import ConceptSpec
from losses.base import Regularizer
from losses.mlm import MaskedLanguageModelingLoss
from losses.pd_loss import PriorDecoupleLoss
from losses.spl import SemanticPreservationLoss
from models import XTI, CustomDiffusion, VisualEncoder
from models.base import PersonalizationModule
from step.requests import TextRequest, encode_request, stack_requests

PROMPTS = ["a photo of a <v1> toy", "a far away photo of a <v1> toy"]


def text_calls(module: PersonalizationModule) -> list[int]:
    """Rows of each text-encoder call made from now on (a forward hook records them)."""
    calls: list[int] = []
    module.text_encoder.register_forward_hook(lambda _m, args, _o: calls.append(len(args[0])))
    return calls


def test_stacking_pads_each_request_and_shifts_extra_ids() -> None:
    main = torch.tensor([[1, 5, 2, 2], [1, 6, 7, 2]])
    first = TextRequest(torch.tensor([[1, 10, 2]]), extra_vectors=torch.zeros(1, 3))
    second = TextRequest(torch.tensor([[1, 10, 11, 2]]), extra_vectors=torch.ones(2, 3))
    plain = TextRequest(torch.tensor([[1, 2]]), with_grad=False)
    ids, vectors = stack_requests(main, [first, second, plain], pad_token_id=2, first_extra_id=10)
    assert ids.tolist() == [
        [1, 5, 2, 2],
        [1, 6, 7, 2],
        [1, 10, 2, 2],  # its own [MASK] row 0
        [1, 11, 12, 2],  # rows 1 and 2: after the first request's one vector
        [1, 2, 2, 2],
    ]
    assert vectors is not None and vectors.shape == (3, 3) and vectors[1:].eq(1).all()
    with pytest.raises(ValueError, match="wider than the step's prompts"):
        stack_requests(main, [TextRequest(torch.ones(1, 5).long())], 2, 10)


def test_folded_call_gives_each_request_its_own_encoding(psi_dir: Path) -> None:
    module = CustomDiffusion(concepts=[ConceptSpec("<v1>", "toy")])
    mlm = MaskedLanguageModelingLoss(contextualizer_dir=str(psi_dir))
    mlm.prepare(module)
    generator = torch.Generator().manual_seed(0)
    masked = mlm.masked_request(module, ["a <v1> toy on a red bench at night"] * 2, generator)
    assert masked is not None
    phrase = TextRequest(module.tokenize(["<v1> toy"] * 2)[:, :4])
    target = TextRequest(module.tokenize(["a photo of a toy"]), with_grad=False)
    requests = [target, masked, phrase]  # the no-grad one first: the module reorders
    calls = text_calls(module)
    main, parts = module.encode_step_text(PROMPTS, requests)
    assert calls == [2 + 2 + 2 + 1]  # one call for the prompts and all three requests
    expected_main = module.encode_text(PROMPTS).hidden_states
    torch.testing.assert_close(main.hidden_states, expected_main, rtol=1e-5, atol=1e-6)
    for request, part in zip(requests, parts):
        alone = encode_request(module, request)
        assert part.hidden_states.shape == alone.hidden_states.shape
        torch.testing.assert_close(part.hidden_states, alone.hidden_states, rtol=1e-5, atol=1e-6)
        assert torch.equal(part.input_ids, request.input_ids)
        assert part.hidden_states.requires_grad == request.with_grad


def losses_of(module: PersonalizationModule, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
    return {
        k: v.detach()
        for k, v in module.compute_losses(batch, module.sample_draws(batch, 0))["parts"].items()
    }


def requesting_losses(psi_dir: Path) -> list[Regularizer]:
    return [
        SemanticPreservationLoss(),
        PriorDecoupleLoss(),
        MaskedLanguageModelingLoss(contextualizer_dir=str(psi_dir)),
    ]


@pytest.mark.parametrize("baseline", ["custom_diffusion", "visual_encoder"])
def test_a_step_with_spl_pd_mlm_runs_one_text_call_and_the_losses_match_their_own_calls(
    psi_dir: Path, baseline: str
) -> None:
    """The losses from the folded step equal those from a record without requested text
    (each loss then encodes its requests itself) -- also under VisualEncoder, where each
    concept row must read its own sample's vectors."""
    datamodule = tiny_datamodule()
    cls = {"custom_diffusion": CustomDiffusion, "visual_encoder": VisualEncoder}[baseline]
    module = cls(concepts=datamodule.concepts, regularizers=requesting_losses(psi_dir))
    for regularizer in module.regularizers:
        regularizer.prepare(module)
    module.attach_datamodule(datamodule)
    batch = next(iter(datamodule.train_dataloader()))
    calls = text_calls(module)
    folded = losses_of(module, batch)
    assert len(calls) == 1  # cache misses, concept phrases and masked prompts all folded

    for regularizer in module.regularizers:  # forget what the folded step cached
        if hasattr(regularizer, "cache"):
            regularizer.cache._entries.clear()
    # The step without text requests: each loss then encodes its own, one call each.
    module.denoise = lambda batch, generator, **_: PersonalizationModule.denoise(
        module, batch, generator
    )
    calls.clear()
    separate = losses_of(module, batch)
    assert len(calls) > 1
    assert folded.keys() == separate.keys() == {"denoise", "spl", "pd", "mlm"}
    for name in folded:
        torch.testing.assert_close(folded[name], separate[name], rtol=1e-4, atol=1e-6)
    assert float(folded["pd"]) > 0 and float(folded["mlm"]) > 0


def test_xti_encodes_requests_on_its_own_path(psi_dir: Path) -> None:
    """XTI's per-layer text path cannot fold: requests go through its encode_token_ids."""
    datamodule = tiny_datamodule()
    module = XTI(concepts=datamodule.concepts, regularizers=requesting_losses(psi_dir))
    for regularizer in module.regularizers:
        regularizer.prepare(module)
    module.attach_datamodule(datamodule)
    batch = next(iter(datamodule.train_dataloader()))
    losses = module.compute_losses(batch, module.sample_draws(batch, 0))
    losses["total"].backward()
    assert module.concept_tokens.embedding.vectors.grad is not None
    assert all(torch.isfinite(v) for v in losses["parts"].values())


def test_resume_with_folded_text_and_prefilled_caches_is_exact(
    psi_dir: Path, tmp_path: Path
) -> None:
    """Caches filled at train start and text folded into the step change nothing a resumed
    run would redo differently."""

    def build() -> tuple[PersonalizationModule, Any]:
        datamodule = tiny_datamodule(rescale_augmentation=True)
        module = CustomDiffusion(
            concepts=datamodule.concepts,
            regularizers=requesting_losses(psi_dir),
            optimizer=optimizer_with_lr(1e-2),
        )
        return module, datamodule

    assert_resume_is_exact(build, tmp_path)
