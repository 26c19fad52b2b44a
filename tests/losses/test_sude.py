"""SuDe (as ACCORD compares it): the formula by hand, truncation, and its gradient."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from regularizer_fakes import FakeModule, random_texts, record_for, sd_betas

from losses.sude import SubjectDerivedLoss

TIMESTEPS = [0, 3, 450, 998]
SUPERCLASS = [f"a photo of a dog {i}" for i in range(len(TIMESTEPS))]


def setup_case(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    module = FakeModule(random_texts([*SUPERCLASS, ""], generator))
    record = record_for({"superclass_prompts": SUPERCLASS}, TIMESTEPS, generator)
    record.model_pred.requires_grad_(True)
    return module, record


def expected_terms(module: FakeModule, record) -> list[float]:
    """rho_t (||e_sub - e_sup||^2 - ||e_sub - e_empty||^2) per sample, rho_0 = 0."""
    betas = sd_betas()
    alphas = 1.0 - betas
    x = record.noisy_latents.numpy().astype(np.float64)
    terms = []
    for i, t in enumerate(TIMESTEPS):
        sub = record.model_pred[i].detach().numpy()

        def eps(prompt: str, i: int = i) -> np.ndarray:
            offset = module.texts[prompt][1].detach().numpy()[0, :4]
            return 0.5 * x[i] + offset[:, None, None]

        rho = 0.0 if t == 0 else betas[t] / (2 * alphas[t] * (1 - np.prod(alphas[:t])))
        gap = ((sub - eps(SUPERCLASS[i])) ** 2).sum() - ((sub - eps("")) ** 2).sum()
        terms.append(rho * gap)
    return terms


@pytest.mark.parametrize("truncation", [None, 1.0, 0.5])
def test_matches_the_formula(truncation: float | None) -> None:
    module, record = setup_case()
    loss = SubjectDerivedLoss(truncation=truncation)(record, module)
    terms = expected_terms(module, record)
    if truncation is not None:
        # p(c_sup | x_{t-1}) = exp(-term) >= tau adds nothing
        terms = [0.0 if np.exp(-term) >= truncation else term for term in terms]
    assert float(loss.detach()) == pytest.approx(float(np.mean(terms)), rel=1e-5, abs=1e-9)


def test_some_terms_are_truncated_and_some_not() -> None:
    """Guards the test above: the fixed case has both signs, so truncation is exercised."""
    module, record = setup_case()
    terms = expected_terms(module, record)[1:]  # t = 0 gives exactly 0
    assert min(terms) < 0 < max(terms)


def test_superclass_and_empty_passes_carry_no_gradient() -> None:
    module, record = setup_case()
    loss = SubjectDerivedLoss(truncation=None)(record, module)
    loss.backward()
    assert module.unet_calls == [{"size": 2 * len(TIMESTEPS), "grad": False}]
    assert record.model_pred.grad is not None and record.model_pred.grad.abs().sum() > 0
    assert all(module.texts[p][1].grad is None for p in [*SUPERCLASS, ""])
