"""SuDe as its authors' code computes it: the formula by hand (numpy for every option, plain
torch for the authors' own at batch 4: per-sample decisions, the unclamped reference), gradient."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from regularizer_fakes import FakeModule, random_texts, record_for, sd_betas

from losses.sude import SubjectDerivedLoss

TIMESTEPS = [0, 3, 450, 998]
SUPERCLASS = [f"a photo of a dog {i}" for i in range(len(TIMESTEPS))]
# A case where the reference truncation keeps some samples and drops others.
MIXED = {"seed": 12, "timesteps": [3, 450, 998, 120]}


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
        """Per sample: the authors' mean over its elements (dim=[1, 2, 3]), or their sum."""
        squared = ((a - b) ** 2).reshape(n, -1)
        return squared.mean(axis=1) if reduction == "mean" else squared.sum(axis=1)

    variance = np.array(
        [betas[t] * (1 - alphabar_prev[t]) / (1 - alphabar[t]) for t in timesteps]
    )
    denominator = 2 * variance + 1e-6
    l_value = (sq(sub, cls) - sq(sub, empty)) / denominator
    # The authors' reference: the class estimate from the unclamped x_0 in the subject's slot.
    cls_unclamped = np.stack([mu(eps(SUPERCLASS[i], i), i, False) for i in range(n)])
    l_ref = (sq(cls_unclamped, cls) - sq(cls_unclamped, empty)) / denominator
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
    for reduction in ("mean", "sum"):
        clamped = authors_terms(module, record, True, True, reduction)
        unclamped = authors_terms(module, record, False, True, reduction)
        assert not np.allclose(clamped[0], unclamped[0])
        assert not np.allclose(clamped[1], unclamped[1])
        keep = clamped[0] > clamped[1]
        assert keep.any() and not keep.all(), reduction


def test_defaults_are_the_authors() -> None:
    loss = SubjectDerivedLoss()
    assert (loss.weight, loss.truncation, loss.clamp_x0, loss.divide_by_coef1) == (
        0.4, "reference", True, True
    )
    assert loss.reduction == "mean"


# The authors' loss at batch 4, by hand in plain torch (float64), one sample at a time, with the
# scheduler's own betas: their ``prob_loss_func_class`` with ``.mean(dim=[1, 2, 3])``.
BATCH4 = [3, 450, 998, 120]


def scheduler_terms(module: FakeModule, t: int) -> dict[str, torch.Tensor]:
    """DDPM's posterior q(x_{t-1} | x_t, x_0) at 0-based index t, from the scheduler's betas."""
    betas = module.noise_scheduler.betas.double()
    alphas = 1.0 - betas
    alphabar = torch.cumprod(alphas, dim=0)
    previous = alphabar[t - 1] if t > 0 else torch.ones((), dtype=torch.float64)
    return {
        "sqrt_ab": alphabar[t].sqrt(),
        "sqrt_1mab": (1.0 - alphabar[t]).sqrt(),
        "coef1": betas[t] * previous.sqrt() / (1.0 - alphabar[t]),
        "coef2": (1.0 - previous) * alphas[t].sqrt() / (1.0 - alphabar[t]),
        "variance": betas[t] * (1.0 - previous) / (1.0 - alphabar[t]),
    }


def x0_of(x_t: torch.Tensor, eps: torch.Tensor, c: dict[str, torch.Tensor]) -> torch.Tensor:
    return (x_t - c["sqrt_1mab"] * eps) / c["sqrt_ab"]


def eps_of(x_t: torch.Tensor, x0: torch.Tensor, c: dict[str, torch.Tensor]) -> torch.Tensor:
    return (x_t - c["sqrt_ab"] * x0) / c["sqrt_1mab"]


def mu_of(x_t: torch.Tensor, x0: torch.Tensor, c: dict[str, torch.Tensor]) -> torch.Tensor:
    return c["coef1"] * x0 + c["coef2"] * x_t


def class_and_empty(module: FakeModule, record) -> tuple[torch.Tensor, torch.Tensor]:
    """The fake UNet's superclass and unconditional predictions on the step's x_t, float64."""
    size = record.noisy_latents.shape[0]
    states = module.encode_text(SUPERCLASS[:size] + [""] * size).hidden_states
    with torch.no_grad():
        out = module.predict_noise(
            record.noisy_latents.repeat(2, 1, 1, 1), record.timesteps.repeat(2), states
        )
    e_class, e_empty = out.double().chunk(2)
    return e_class, e_empty


def authors_by_hand(
    module: FakeModule, record, reduction: str = "mean", clamp: bool = True
) -> tuple[float, list[bool], list[float], list[float]]:
    """(loss, kept per sample, l per sample, l_ref per sample): per sample i,
    l = [r(mu_sub - mu_cls) - r(mu_sub - mu_0)] / (2 sigma^2 + 1e-6),
    l_ref = [r(mu_cls_unclamped - mu_cls) - r(mu_cls_unclamped - mu_0)] / (2 sigma^2 + 1e-6),
    r the mean (or sum) of squares over that sample's elements; the loss is the batch mean of
    1[l > l_ref] l / coef1."""
    e_class, e_empty = class_and_empty(module, record)

    def r(a: torch.Tensor) -> torch.Tensor:
        return (a**2).mean() if reduction == "mean" else (a**2).sum()

    def clip(x0: torch.Tensor) -> torch.Tensor:
        return x0.clamp(-1.0, 1.0) if clamp else x0

    total, kept, ls, refs = torch.zeros((), dtype=torch.float64), [], [], []
    for i, t in enumerate(record.timesteps.tolist()):
        c = scheduler_terms(module, t)
        x_t = record.noisy_latents[i].double()
        mu_sub = mu_of(x_t, x0_of(x_t, record.model_pred[i].detach().double(), c), c)
        x0_class = x0_of(x_t, e_class[i], c)
        mu_cls = mu_of(x_t, clip(x0_class), c)
        mu_cls_unclamped = mu_of(x_t, x0_class, c)
        mu_0 = mu_of(x_t, clip(x0_of(x_t, e_empty[i], c)), c)
        denominator = 2.0 * c["variance"] + 1e-6
        l_value = (r(mu_sub - mu_cls) - r(mu_sub - mu_0)) / denominator
        l_ref = (r(mu_cls_unclamped - mu_cls) - r(mu_cls_unclamped - mu_0)) / denominator
        keep = bool(l_value > l_ref)
        total = total + (l_value / c["coef1"] if keep else 0.0)
        kept.append(keep)
        ls.append(float(l_value))
        refs.append(float(l_ref))
    return float(total / len(kept)), kept, ls, refs


def subject_prediction(
    module: FakeModule, record, kappas: list[float], clamp: bool, towards_clamped: float = 0.0
) -> torch.Tensor:
    """An epsilon for the subject whose posterior mean is mu_cls~ + lam (mu_cls - mu_cls~)
    + kappa (mu_cls - mu_0) per sample (mu_cls~ from the unclamped x_0, lam =
    ``towards_clamped``). l is linear in mu_sub, and l(mu_cls~) = l_ref, so with lam = 0 a
    sample is kept exactly when its kappa < 0; with kappa = 0 and lam = 0.5 its l lies halfway
    between the authors' l_ref and the clamped estimate's -r(mu_cls - mu_0) / (2 sigma^2)."""
    e_class, e_empty = class_and_empty(module, record)
    rows = []
    for i, t in enumerate(record.timesteps.tolist()):
        c = scheduler_terms(module, t)
        x_t = record.noisy_latents[i].double()
        x0_class = x0_of(x_t, e_class[i], c)
        clipped = x0_class.clamp(-1.0, 1.0) if clamp else x0_class
        x0_empty = x0_of(x_t, e_empty[i], c)
        x0_empty = x0_empty.clamp(-1.0, 1.0) if clamp else x0_empty
        # mu is affine in x_0 with slope coef1, so the line in mu is the same line in x_0.
        x0_sub = (
            x0_class + towards_clamped * (clipped - x0_class) + kappas[i] * (clipped - x0_empty)
        )
        rows.append(eps_of(x_t, x0_sub, c))
    return torch.stack(rows).float().requires_grad_(True)


@pytest.mark.parametrize("clamp", [True, False])
def test_each_sample_is_truncated_on_its_own(clamp: bool) -> None:
    """Batch 4, the authors' element mean: two samples are more superclass-like than the
    superclass itself (dropped), two less (kept). The authors decide per sample; one decision
    over the whole batch (the earlier element mean with the batch in it) cannot give this."""
    module, record = setup_case(seed=5, timesteps=BATCH4)
    record.model_pred = subject_prediction(module, record, [-1.0, 0.5, 1.0, -1.5], clamp)
    want, kept, ls, refs = authors_by_hand(module, record, "mean", clamp)
    assert kept == [True, False, False, True]
    assert all(abs(a - b) > 1e-2 * abs(b) for a, b in zip(ls, refs))  # no near-ties
    assert want != 0
    loss = SubjectDerivedLoss(clamp_x0=clamp)(record, module)
    assert float(loss.detach()) == pytest.approx(want, rel=1e-4)
    (grad,) = torch.autograd.grad(loss, record.model_pred)
    per_sample = grad.flatten(1).abs().sum(dim=1)
    assert [bool(g > 0) for g in per_sample] == kept  # dropped samples get no gradient


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_the_reference_uses_the_unclamped_class_estimate(reduction: str) -> None:
    """Batch 4 with clamping active: each subject's l lies halfway between the authors' l_ref
    (the unclamped class estimate in the subject's slot) and what the clamped estimate there
    would give, so the two references take the opposite decision on every sample."""
    module, record = setup_case(seed=6, timesteps=BATCH4)
    record.model_pred = subject_prediction(module, record, [0.0] * 4, True, towards_clamped=0.5)
    want, kept, ls, refs = authors_by_hand(module, record, reduction, clamp=True)
    # The clamped estimate's own score, -r(mu_cls - mu_0) / (2 sigma^2 + 1e-6): the other side.
    other = [2 * l_value - ref for l_value, ref in zip(ls, refs)]
    assert all((a > r) != (a > o) for a, r, o in zip(ls, refs, other))
    assert any(kept) and want != 0
    loss = SubjectDerivedLoss(reduction=reduction)(record, module)
    assert float(loss.detach()) == pytest.approx(want, rel=1e-4)


def test_batch_four_defaults_match_the_authors_by_hand() -> None:
    """The defaults on an ordinary batch of 4 (random subject prediction)."""
    module, record = setup_case(seed=4, timesteps=BATCH4)
    want, kept, _, _ = authors_by_hand(module, record)
    loss = SubjectDerivedLoss()(record, module)
    assert float(loss.detach()) == pytest.approx(want, rel=1e-4)


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
