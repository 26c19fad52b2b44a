"""PDLoss (ACCORD Eq. 14): the formula by hand for each target, its gradient, bad settings."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import parameters_reached, tiny_datamodule
from regularizer_fakes import WIDTH, FakeModule, random_texts, record_for

from losses.pd_loss import PriorDecoupleLoss
from models import CustomDiffusion

GENERAL = ["a on the beach", "a next to a girl", ""]


def setup_case():
    generator = torch.Generator().manual_seed(3)
    batch = {
        "caption_concept": ["<v1> dog"] * 3,
        "caption_superclass": ["dog"] * 3,
        "caption_general": GENERAL,
    }
    projection = torch.randn(3, WIDTH, generator=generator)
    texts = random_texts(["<v1> dog", "dog", *GENERAL], generator)
    texts[""] = (texts[""][0][:1] + [9] * 5, texts[""][1])  # the empty prompt: BOS, EOS
    module = FakeModule(texts, projection=projection)
    return module, record_for(batch, [1, 2, 3], generator), projection.numpy()


def feature(module: FakeModule, prompt: str, matrix: np.ndarray) -> np.ndarray:
    """W h[first EOS] for a prompt of the fake module."""
    ids, hidden = module.texts[prompt]
    return matrix @ hidden.detach().numpy()[ids.index(9)]


def cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.mark.parametrize("target", ["superclass", 0.0, -1.0])
def test_matches_the_papers_formula(target: str | float) -> None:
    module, record, matrix = setup_case()
    loss = PriorDecoupleLoss(target=target)(record, module)
    f_p, f_s = feature(module, "<v1> dog", matrix), feature(module, "dog", matrix)
    terms = []
    for general in GENERAL:
        f_g = feature(module, general, matrix)
        goal = cos(f_s, f_g) if target == "superclass" else target
        terms.append(abs(cos(f_p, f_g) - goal))
    assert float(loss.detach()) == pytest.approx(float(np.mean(terms)), rel=1e-5)


def test_gradient_reaches_the_concept_phrase_only() -> None:
    module, record, _ = setup_case()
    PriorDecoupleLoss()(record, module).backward()
    concept_grad = module.texts["<v1> dog"][1].grad
    assert concept_grad is not None and concept_grad.abs().sum() > 0
    for prompt in ["dog", *GENERAL]:
        assert module.texts[prompt][1].grad is None, prompt
    assert module.encoded[0] == ["<v1> dog"] * 3  # one per sample: its own vectors may differ


def test_gradient_reaches_the_concept_token_of_the_tiny_model() -> None:
    datamodule = tiny_datamodule()
    datamodule.request(PriorDecoupleLoss.requires, "test")
    module = CustomDiffusion(concepts=datamodule.concepts)
    batch = next(iter(datamodule.train_dataloader()))
    record = module.denoise(batch, module.sample_draws(batch, 0))
    loss = PriorDecoupleLoss()(record, module)
    reached = parameters_reached(module, loss)
    assert reached == {"text_encoder.embeddings.token_embedding.vectors"}


@pytest.mark.parametrize(("target", "message"), [("class", "superclass' or a number"), (2.0, "")])
def test_bad_target_is_refused(target: str | float, message: str) -> None:
    with pytest.raises(ValueError, match=message or "within"):
        PriorDecoupleLoss(target=target)
