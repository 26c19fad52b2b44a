"""MLM and SPL on XTI/P+: every cross-attention layer's token trains (the authors' choice), or
only ``text_layer``'s when asked; the every-layer MLM value is the mean over layers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import tiny_datamodule

from components.text_masking import masked_cross_entropy
from losses.mlm import MaskedLanguageModelingLoss
from losses.spl import SemanticPreservationLoss
from models import XTI
from models.base import PersonalizationModule

CAPTIONS = [
    "a photo of a <v1> toy on a wooden table next to a red apple, at sunset",
    "a <v1> toy floating in water, watercolor painting",
]


def layers_with_gradient(module: XTI) -> set[int]:
    grad = module.concept_tokens.embedding.vectors.grad
    rows_per_layer = grad.shape[0] // len(module.layer_names)
    return {int(r) // rows_per_layer for r in grad.abs().sum(dim=1).nonzero().flatten()}


def build(regularizer) -> XTI:
    datamodule = tiny_datamodule()
    module = XTI(concepts=datamodule.concepts, regularizers=[regularizer])
    with torch.no_grad():  # distinct vectors per layer, so layers are told apart
        vectors = module.concept_tokens.embedding.vectors
        vectors.add_(torch.randn(vectors.shape, generator=torch.Generator().manual_seed(0)))
    regularizer.prepare(module)
    return module


@pytest.mark.parametrize("every_layer", [True, False])
def test_mlm_reaches_every_layer_or_the_text_layer(psi_dir: Path, every_layer: bool) -> None:
    mlm = MaskedLanguageModelingLoss(contextualizer_dir=str(psi_dir), every_layer=every_layer)
    module = build(mlm)
    mlm.loss(module, CAPTIONS, torch.Generator().manual_seed(0)).backward()
    expected = set(range(len(module.layer_names))) if every_layer else {module.text_layer}
    assert len(module.layer_names) > 1
    assert layers_with_gradient(module) == expected


def test_every_layer_mlm_is_the_mean_over_layers(psi_dir: Path) -> None:
    """Independently: each layer's copy of the masked captions encoded on its own through the
    plain lookup, psi's cross-entropy per layer, then the mean (equal masked counts)."""
    mlm = MaskedLanguageModelingLoss(contextualizer_dir=str(psi_dir), every_layer=True)
    module = build(mlm)
    with torch.no_grad():
        together = float(mlm.loss(module, CAPTIONS, torch.Generator().manual_seed(3)))
        request = mlm.masked_request(module, CAPTIONS, torch.Generator().manual_seed(3))
        input_ids, masked = request.note
        per_layer = []
        for layer in range(len(module.layer_names)):
            ids = module.blocks.for_layer(request.input_ids, layer)
            # the plain lookup (XTI's own would remap layer 0's ids to text_layer)
            hidden = PersonalizationModule.encode_token_ids(module, ids, request.extra_vectors)
            logits = mlm.contextualizer(
                hidden.hidden_states,
                padding_mask=(ids == module.tokenizer.eos_token_id).cumsum(1) > 1,
                positions=masked,
            )
            per_layer.append(float(masked_cross_entropy(logits, input_ids, masked)))
    assert len(set(per_layer)) > 1  # the layers' tokens differ, so their losses do
    assert together == pytest.approx(sum(per_layer) / len(per_layer), rel=1e-5)


@pytest.mark.parametrize("every_layer", [True, False])
def test_spl_reaches_every_layer_or_the_text_layer(every_layer: bool) -> None:
    spl = SemanticPreservationLoss(every_layer=every_layer)
    module = build(spl)
    datamodule = tiny_datamodule()
    datamodule.request(spl.requires, "test")
    batch = next(iter(datamodule.train_dataloader()))
    losses = module.compute_losses(batch, module.sample_draws(batch, 0))
    losses["parts"]["spl"].backward()
    expected = set(range(len(module.layer_names))) if every_layer else {module.text_layer}
    assert layers_with_gradient(module) == expected
