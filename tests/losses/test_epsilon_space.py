"""losses/epsilon_space.py against DDPM's equations (Ho et al. 2020) and diffusers' own sampler.

Every reference here is written out from the paper in float64 from the scheduler's betas
(alphabar_{t-1} as the product of the first t alphas, 1 for t = 0), or is diffusers'
`DDPMScheduler.step`; none of them calls the module under test.
"""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import DDPMScheduler

from losses.epsilon_space import (
    check_epsilon_prediction,
    posterior_mean,
    posterior_terms,
    posterior_weight,
    squared_distance,
)

TIMESTEPS = [0, 1, 2, 17, 250, 500, 998, 999]
SCHEDULES = {
    "sd15": {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"},
    "ddpm": {"beta_start": 1e-4, "beta_end": 0.02, "beta_schedule": "linear"},
}


@pytest.fixture(params=sorted(SCHEDULES))
def scheduler(request: pytest.FixtureRequest) -> DDPMScheduler:
    """SD 1.5's schedule and DDPM's original linear one: nothing may be SD-specific."""
    return DDPMScheduler(num_train_timesteps=1000, **SCHEDULES[request.param])


def ddpm_quantities(scheduler: DDPMScheduler, t: int) -> dict[str, float]:
    """beta_t, alpha_t, alphabar_t, alphabar_{t-1} at the scheduler's 0-based index t."""
    betas = [float(b) for b in scheduler.betas.double()]
    alphas = [1.0 - b for b in betas]
    return {
        "beta": betas[t],
        "alpha": alphas[t],
        "alphabar": math.prod(alphas[: t + 1]),
        "alphabar_prev": math.prod(alphas[:t]),  # the empty product at t = 0 is 1
    }


def timesteps() -> torch.Tensor:
    return torch.tensor(TIMESTEPS)


def per_sample(values: list[float]) -> torch.Tensor:
    """A float64 (B, 1, 1, 1) column, broadcasting over latents."""
    return torch.tensor(values, dtype=torch.float64).view(-1, 1, 1, 1)


def test_posterior_terms_are_ddpms_posterior_in_float64(scheduler: DDPMScheduler) -> None:
    """coef1 = beta sqrt(abar_{t-1}) / (1 - abar), coef2 = (1 - abar_{t-1}) sqrt(alpha) /
    (1 - abar), variance = beta (1 - abar_{t-1}) / (1 - abar). rtol 1e-6 also fails a float32
    computation, which near t = 0 loses ~1e-5 in 1 - abar (abar ~ 1)."""
    terms = posterior_terms(scheduler, timesteps())
    for i, t in enumerate(TIMESTEPS):
        q = ddpm_quantities(scheduler, t)
        one_minus = 1.0 - q["alphabar"]
        want = {
            "coef1": q["beta"] * math.sqrt(q["alphabar_prev"]) / one_minus,
            "coef2": (1.0 - q["alphabar_prev"]) * math.sqrt(q["alpha"]) / one_minus,
            "variance": q["beta"] * (1.0 - q["alphabar_prev"]) / one_minus,
            "sqrt_alphabar": math.sqrt(q["alphabar"]),
            "sqrt_one_minus_alphabar": math.sqrt(one_minus),
        }
        for name, value in want.items():
            got = getattr(terms, name)
            assert got.shape == (len(TIMESTEPS),) and got.dtype == torch.float32
            assert float(got[i]) == pytest.approx(value, rel=1e-6, abs=1e-12), (name, t)


def test_at_t_zero_the_posterior_is_the_predicted_x0(scheduler: DDPMScheduler) -> None:
    """alphabar_{-1} = 1: coef1 = 1, coef2 = 0 and no variance, so x_{-1} is x_0 itself."""
    terms = posterior_terms(scheduler, torch.tensor([0]))
    assert float(terms.coef1[0]) == pytest.approx(1.0, rel=1e-6)
    assert float(terms.coef2[0]) == 0.0 and float(terms.variance[0]) == 0.0


def test_posterior_weight_is_the_papers_epsilon_space_weight(scheduler: DDPMScheduler) -> None:
    """beta_t / (2 alpha_t (1 - alphabar_{t-1})) per sample, 0 (not inf or nan) at t = 0."""
    weight = posterior_weight(scheduler, timesteps())
    assert weight.shape == (len(TIMESTEPS),) and weight.dtype == torch.float32
    for i, t in enumerate(TIMESTEPS):
        q = ddpm_quantities(scheduler, t)
        want = 0.0 if t == 0 else q["beta"] / (2 * q["alpha"] * (1 - q["alphabar_prev"]))
        assert float(weight[i]) == pytest.approx(want, rel=1e-6), t
    assert float(weight[0]) == 0.0 and torch.isfinite(weight).all()


def ddpm_mean(x_t: torch.Tensor, eps: torch.Tensor, q: dict[str, float]) -> torch.Tensor:
    """Ho et al. Eq. 11: (x_t - beta_t / sqrt(1 - alphabar_t) eps) / sqrt(alpha_t)."""
    return (x_t - q["beta"] / math.sqrt(1 - q["alphabar"]) * eps) / math.sqrt(q["alpha"])


def test_weight_turns_a_mean_difference_over_two_variances_into_epsilon_space(
    scheduler: DDPMScheduler,
) -> None:
    """The module docstring's claim: with DDPM's mean (Eq. 11) at one x_t,
    ||mu_a - mu_b||^2 / (2 sigma_t^2) = weight * ||eps_a - eps_b||^2."""
    generator = torch.Generator().manual_seed(0)
    x_t, eps_a, eps_b = (torch.randn(4, 3, 3, generator=generator).double() for _ in "abc")
    weight = posterior_weight(scheduler, timesteps())
    for i, t in enumerate(TIMESTEPS[1:], start=1):  # t = 0 has no variance to divide by
        q = ddpm_quantities(scheduler, t)
        mean_a, mean_b = ddpm_mean(x_t, eps_a, q), ddpm_mean(x_t, eps_b, q)
        variance = q["beta"] * (1 - q["alphabar_prev"]) / (1 - q["alphabar"])
        lhs = float((mean_a - mean_b).pow(2).sum()) / (2 * variance)
        rhs = float(weight[i]) * float((eps_a - eps_b).pow(2).sum())
        assert rhs == pytest.approx(lhs, rel=1e-6), t


def test_posterior_mean_without_clamp_is_ddpms_epsilon_form(scheduler: DDPMScheduler) -> None:
    """coef1 x0(eps) + coef2 x_t equals Eq. 11's (x_t - beta / sqrt(1 - abar) eps) / sqrt(alpha)
    at every t, t = 0 included (there both are the x_0 that eps implies)."""
    generator = torch.Generator().manual_seed(1)
    shape = (len(TIMESTEPS), 4, 5, 5)
    x_t, eps = torch.randn(shape, generator=generator), torch.randn(shape, generator=generator)
    got = posterior_mean(x_t, eps, posterior_terms(scheduler, timesteps()), clamp=False)
    qs = [ddpm_quantities(scheduler, t) for t in TIMESTEPS]
    beta, alpha = per_sample([q["beta"] for q in qs]), per_sample([q["alpha"] for q in qs])
    one_minus = per_sample([1 - q["alphabar"] for q in qs])
    want = (x_t.double() - beta / one_minus.sqrt() * eps.double()) / alpha.sqrt()
    assert got.dtype == torch.float32 and got.shape == shape
    assert torch.allclose(got.double(), want, rtol=1e-5, atol=1e-5)


def ddpm_step_mean(
    scheduler: DDPMScheduler, noisy: torch.Tensor, eps: torch.Tensor, t: int
) -> torch.Tensor:
    """diffusers' DDPM step (clip_sample on) without its sampling noise: the step adds
    sqrt(variance) * randn(generator) for t > 0, redrawn here from the same seed."""
    generator = torch.Generator().manual_seed(123)
    step = scheduler.step(eps, t, noisy, generator=generator).prev_sample
    if t == 0:
        return step
    q = ddpm_quantities(scheduler, t)
    variance = q["beta"] * (1 - q["alphabar_prev"]) / (1 - q["alphabar"])
    redrawn = torch.randn(eps.shape, generator=torch.Generator().manual_seed(123))
    return step - math.sqrt(variance) * redrawn


def test_clamped_posterior_mean_is_the_ddpm_samplers_clip_denoised() -> None:
    """With clamp, x_0 is clipped to [-1, 1] before the posterior mean, as DDPM's sampler
    (diffusers' DDPMScheduler with clip_sample) does. Inputs are large enough that the clip
    bites, so the clamped and unclamped means differ."""
    scheduler = DDPMScheduler(**SCHEDULES["sd15"], clip_sample=True, clip_sample_range=1.0)
    generator = torch.Generator().manual_seed(2)
    shape = (len(TIMESTEPS), 4, 5, 5)
    noisy = 2 * torch.randn(shape, generator=generator)
    eps = torch.randn(shape, generator=generator)
    terms = posterior_terms(scheduler, timesteps())
    clamped = posterior_mean(noisy, eps, terms, clamp=True)
    for i, t in enumerate(TIMESTEPS):
        want = ddpm_step_mean(scheduler, noisy[i : i + 1], eps[i : i + 1], t)[0]
        assert torch.allclose(clamped[i], want, rtol=1e-4, atol=1e-5), t
    unclamped = posterior_mean(noisy, eps, terms, clamp=False)
    assert (clamped - unclamped).abs().amax() > 0.1


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_squared_distance_sums_or_averages_each_sample_in_float32(dtype: torch.dtype) -> None:
    """Per sample over every non-batch dimension, in float32 whatever the inputs' dtype (a
    half-precision sum of 240 squares would miss rtol 1e-6)."""
    generator = torch.Generator().manual_seed(3)
    a = torch.randn(3, 4, 6, 10, generator=generator).to(dtype)
    b = torch.randn(3, 4, 6, 10, generator=generator).to(dtype)
    sums = [float(((a[i].double() - b[i].double()) ** 2).sum()) for i in range(3)]
    total, mean = squared_distance(a, b, "sum"), squared_distance(a, b, "mean")
    for got in (total, mean):
        assert got.shape == (3,) and got.dtype == torch.float32
    assert total.tolist() == pytest.approx(sums, rel=1e-6)
    assert mean.tolist() == pytest.approx([s / (4 * 6 * 10) for s in sums], rel=1e-6)


def test_squared_distance_keeps_samples_apart() -> None:
    """Sample i's distance is its own: changing another sample leaves it alone."""
    a, b = torch.zeros(2, 3, 4), torch.zeros(2, 3, 4)
    b[1] = 2.0
    assert squared_distance(a, b, "sum").tolist() == [0.0, 48.0]
    assert squared_distance(a, b, "mean").tolist() == [0.0, 4.0]


def test_epsilon_prediction_passes() -> None:
    check_epsilon_prediction(DDPMScheduler(prediction_type="epsilon"), "DDLoss")


@pytest.mark.parametrize("prediction", ["v_prediction", "sample"])
def test_other_predictions_are_refused_naming_the_loss_and_the_prediction(prediction: str) -> None:
    with pytest.raises(ValueError) as error:
        check_epsilon_prediction(DDPMScheduler(prediction_type=prediction), "SuDe")
    message = str(error.value)
    assert "SuDe is written for epsilon-predicting models" in message
    assert repr(prediction) in message and "leave SuDe out" in message
