"""Diffusion-as-classifier losses in epsilon space (DDLoss, SuDe): shared weight and distance.

Both losses compare Gaussian log densities of the reverse step x_t -> x_{t-1} under different
conditions. With the DDPM mean mu(x_t, c) = (x_t - beta_t / sqrt(1 - alphabar_t) eps(x_t, c))
/ sqrt(alpha_t) and the posterior variance sigma_t^2 = beta_t (1 - alphabar_{t-1}) /
(1 - alphabar_t), a mean difference over 2 sigma_t^2 becomes, in epsilon space,

    ||mu_a - mu_b||^2 / (2 sigma_t^2)
        = beta_t / (2 alpha_t (1 - alphabar_{t-1})) ||eps_a - eps_b||^2

(alpha_t = 1 - beta_t per step, alphabar the cumulative product; t is the scheduler's own
0-based index). At t = 0 the posterior variance is zero (x_{-1} = x_0 is deterministic) and
the weight infinite, so it is set to 0 there: that step carries no classifier signal.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from diffusers import DDPMScheduler

Reduction = Literal["sum", "mean"]


def check_epsilon_prediction(scheduler: DDPMScheduler, who: str) -> None:
    """These losses are derived for epsilon prediction; fail early on any other."""
    prediction = scheduler.config.prediction_type
    if prediction != "epsilon":
        raise ValueError(
            f"{who} is written for epsilon-predicting models, but this scheduler predicts "
            f"{prediction!r}; use an epsilon model (SD 1.x, tiny-sd) or leave {who} out."
        )


def posterior_weight(scheduler: DDPMScheduler, timesteps: torch.Tensor) -> torch.Tensor:
    """beta_t / (2 alpha_t (1 - alphabar_{t-1})) per sample, 0 at t = 0; shape (B,), fp32."""
    device = timesteps.device
    betas = scheduler.betas.to(device=device, dtype=torch.float64)
    alphas = 1.0 - betas
    alphas_cumprod = torch.cumprod(alphas, dim=0)
    t = timesteps.long()
    previous = alphas_cumprod[(t - 1).clamp(min=0)]
    weight = betas[t] / (2.0 * alphas[t] * (1.0 - previous))
    return torch.where(t > 0, weight, torch.zeros_like(weight)).float()


def squared_distance(a: torch.Tensor, b: torch.Tensor, reduction: Reduction) -> torch.Tensor:
    """||a - b||^2 per sample (sum over all but the batch dim, the Gaussian's own norm), or
    its mean over elements (a per-element scale, independent of the latent size)."""
    squared = (a.float() - b.float()).pow(2).flatten(1)
    return squared.sum(dim=1) if reduction == "sum" else squared.mean(dim=1)


@dataclass(frozen=True)
class PosteriorTerms:
    """DDPM's q(x_{t-1} | x_t, x_0) per sample, shape (B,) each, fp32: the mean is
    ``coef1 * x_0 + coef2 * x_t`` and the variance ``variance`` (0 at t = 0); x_0 is
    recovered from an epsilon prediction with ``sqrt_alphabar`` and ``sqrt_one_minus_alphabar``.
    """

    coef1: torch.Tensor
    coef2: torch.Tensor
    variance: torch.Tensor
    sqrt_alphabar: torch.Tensor
    sqrt_one_minus_alphabar: torch.Tensor


def posterior_terms(scheduler: DDPMScheduler, timesteps: torch.Tensor) -> PosteriorTerms:
    """The posterior's coefficients at the scheduler's 0-based indices (alphabar_{-1} = 1)."""
    device = timesteps.device
    betas = scheduler.betas.to(device=device, dtype=torch.float64)
    alphas = 1.0 - betas
    alphas_cumprod = torch.cumprod(alphas, dim=0)
    previous = torch.cat([alphas_cumprod.new_ones(1), alphas_cumprod[:-1]])
    t = timesteps.long()
    one_minus = 1.0 - alphas_cumprod[t]
    return PosteriorTerms(
        coef1=(betas[t] * previous[t].sqrt() / one_minus).float(),
        coef2=((1.0 - previous[t]) * alphas[t].sqrt() / one_minus).float(),
        variance=(betas[t] * (1.0 - previous[t]) / one_minus).float(),
        sqrt_alphabar=alphas_cumprod[t].sqrt().float(),
        sqrt_one_minus_alphabar=one_minus.sqrt().float(),
    )


def posterior_mean(
    noisy: torch.Tensor, epsilon: torch.Tensor, terms: PosteriorTerms, clamp: bool
) -> torch.Tensor:
    """mu(x_t, eps): the x_0 that ``epsilon`` implies (clamped to [-1, 1] when ``clamp``, as
    the DDPM sampler's ``clip_denoised``), put through the posterior mean."""

    def per_sample(values: torch.Tensor) -> torch.Tensor:
        return values.view(-1, *([1] * (noisy.dim() - 1)))

    x_t = noisy.float()
    x_0 = (x_t - per_sample(terms.sqrt_one_minus_alphabar) * epsilon.float()) / per_sample(
        terms.sqrt_alphabar
    )
    if clamp:
        x_0 = x_0.clamp(-1.0, 1.0)
    return per_sample(terms.coef1) * x_0 + per_sample(terms.coef2) * x_t
