"""SuDe as its authors' code computes it: the formula by hand in numpy, every option, gradient."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from regularizer_fakes import FakeModule, random_texts, record_for, sd_betas

from losses.sude import SubjectDerivedLoss

TIMESTEPS = [0, 3, 450, 998]
SUPERCLASS = [f"a photo of a dog {i}" for i in range(len(TIMESTEPS))]
# A case where the reference truncation keeps some samples and drops others (per-sample sums).
MIXED = {"seed": 4, "timesteps": [3, 450, 998, 120]}


def setup_case(seed: int = 0, timesteps: list[int] = TIMESTEPS):
    generator = torch.Generator().manual_seed(seed)
    module = FakeModule(random_texts([*SUPERCLASS, ""], generator))
    batch = {"superclass_prompts": SUPERCLASS[: len(timesteps)]}
    record = record_for(batch, timesteps, generator)
    record.model_pred.requires_grad_(True)
    return module, record


def authors_terms(module: FakeModule, record, clamp: bool, coef1_scale: bool, reduction: str):
    """(l per sample, l_ref per sample, coef1 per sample), from DDPM's posterior in numpy."""
    betas = sd_betas()
    alphas = 1.0 - betas
    alphabar = np.cumprod(alphas)
    alphabar_prev = np.concatenate([[1.0], alphabar[:-1]])
    x = record.noisy_latents.numpy().astype(np.float64)
    timesteps = record.timesteps.tolist()

    def eps(prompt: str, i: int) -> np.ndarray:
        offset = module.texts[prompt][1].detach().numpy()[0, :4].astype(np.float64)
        return 0.5 * x[i] + offset[:, None, None]

    def mu(e: np.ndarray, i: int, clip: bool) -> np.ndarray:
        t = timesteps[i]
        x0 = (x[i] - np.sqrt(1 - alphabar[t]) * e) / np.sqrt(alphabar[t])
        if clip:
            x0 = np.clip(x0, -1, 1)
        c1 = betas[t] * np.sqrt(alphabar_prev[t]) / (1 - alphabar[t])
        c2 = (1 - alphabar_prev[t]) * np.sqrt(alphas[t]) / (1 - alphabar[t])
        return c1 * x0 + c2 * x[i]

    n = len(timesteps)
    sub = np.stack([mu(record.model_pred[i].detach().numpy(), i, False) for i in range(n)])
    cls = np.stack([mu(eps(SUPERCLASS[i], i), i, clamp) for i in range(n)])
    empty = np.stack([mu(eps("", i), i, clamp) for i in range(n)])

    def sq(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        if reduction == "mean":
            return np.full(n, ((a - b) ** 2).mean())
        return ((a - b) ** 2).reshape(n, -1).sum(axis=1)

    variance = np.array(
        [betas[t] * (1 - alphabar_prev[t]) / (1 - alphabar[t]) for t in timesteps]
    )
    denominator = 2 * variance + 1e-6
    l_value = (sq(sub, cls) - sq(sub, empty)) / denominator
    l_ref = -sq(cls, empty) / denominator
    coef1 = np.array([betas[t] * np.sqrt(alphabar_prev[t]) / (1 - alphabar[t]) for t in timesteps])
    return l_value, l_ref, coef1 if coef1_scale else np.ones(n)


def expected(module, record, truncation, clamp, coef1_scale, reduction) -> float:
    l_value, l_ref, coef1 = authors_terms(module, record, clamp, coef1_scale, reduction)
    if truncation == "reference":
        keep = l_value > l_ref
    elif truncation == "zero":
        keep = l_value > 0
    else:
        keep = np.ones_like(l_value, dtype=bool)
    return float(np.mean(np.where(keep, l_value, 0.0) / coef1))


@pytest.mark.parametrize("truncation", ["reference", "zero", "none"])
@pytest.mark.parametrize("clamp", [True, False])
@pytest.mark.parametrize("coef1_scale", [True, False])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_matches_the_authors_formula(truncation, clamp, coef1_scale, reduction) -> None:
    module, record = setup_case(**MIXED)
    loss = SubjectDerivedLoss(
        truncation=truncation, clamp_x0=clamp, divide_by_coef1=coef1_scale, reduction=reduction
    )(record, module)
    want = expected(module, record, truncation, clamp, coef1_scale, reduction)
    assert float(loss.detach()) == pytest.approx(want, rel=1e-4, abs=1e-6)


def test_batch_one_is_the_authors_setting() -> None:
    # The authors train at batch 1, where the element mean is that one sample's.
    module, record = setup_case(timesteps=[450])
    loss = SubjectDerivedLoss()(record, module)
    want = expected(module, record, "reference", True, True, "mean")
    assert float(loss.detach()) == pytest.approx(want, rel=1e-4)


def test_the_fixed_case_exercises_clamp_and_truncation() -> None:
    """Guards the tests above: the clamp changes the value and the reference truncation keeps
    some samples and drops others, so neither option can pass by doing nothing."""
    module, record = setup_case(**MIXED)
    clamped = authors_terms(module, record, True, True, "sum")
    unclamped = authors_terms(module, record, False, True, "sum")
    assert not np.allclose(clamped[0], unclamped[0])
    keep = clamped[0] > clamped[1]
    assert keep.any() and not keep.all()


def test_defaults_are_the_authors() -> None:
    loss = SubjectDerivedLoss()
    assert (loss.weight, loss.truncation, loss.clamp_x0, loss.divide_by_coef1) == (
        0.4, "reference", True, True
    )
    assert loss.reduction == "mean"


def test_without_the_authors_steps_it_is_the_epsilon_space_form() -> None:
    """No clamp, no 1/coef1, per-sample sums: rho_t (||e_sub - e_cls||^2 - ||e_sub - e_0||^2),
    up to the 1e-6 floor on the variance."""
    module, record = setup_case(**MIXED)
    betas = sd_betas()
    alphas = 1.0 - betas
    x = record.noisy_latents.numpy().astype(np.float64)
    terms = []
    for i, t in enumerate(record.timesteps.tolist()):
        sub = record.model_pred[i].detach().numpy()

        def eps(prompt: str, i: int = i) -> np.ndarray:
            offset = module.texts[prompt][1].detach().numpy()[0, :4]
            return 0.5 * x[i] + offset[:, None, None]

        rho = betas[t] / (2 * alphas[t] * (1 - np.prod(alphas[:t])))
        terms.append(rho * (((sub - eps(SUPERCLASS[i])) ** 2).sum() - ((sub - eps("")) ** 2).sum()))
    loss = SubjectDerivedLoss(
        truncation="none", clamp_x0=False, divide_by_coef1=False, reduction="sum"
    )(record, module)
    assert float(loss.detach()) == pytest.approx(float(np.mean(terms)), rel=1e-2)


def test_superclass_and_empty_passes_carry_no_gradient() -> None:
    module, record = setup_case()
    loss = SubjectDerivedLoss(truncation="none")(record, module)
    loss.backward()
    assert module.unet_calls == [{"size": 2 * len(TIMESTEPS), "grad": False}]
    assert record.model_pred.grad is not None and record.model_pred.grad.abs().sum() > 0
    assert all(module.texts[p][1].grad is None for p in [*SUPERCLASS, ""])


def test_bad_options_are_refused() -> None:
    with pytest.raises(ValueError, match="truncation"):
        SubjectDerivedLoss(truncation="half")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="reduction"):
        SubjectDerivedLoss(reduction="max")  # type: ignore[arg-type]
