"""The reverse-step posterior of flow matching, for the losses written with DDPM's (DDLoss,
SuDe); the derivation is docs/DESIGN.md's "The papers' losses on flow matching".

Flow matching noises x0 to x_s = (1 - s) x0 + s n: a Gaussian with signal a_s = 1 - s and
noise sd s. For r < s, x_s given x_r is Gaussian with a_{s|r} = a_s / a_r and variance
v_{s|r} = s^2 - a_{s|r}^2 r^2, so q(x_r | x_s, x0) = N(coef1 x0 + coef2 x_s, variance):

    coef1 = a_r v_{s|r} / s^2,   coef2 = a_{s|r} r^2 / s^2,   variance = v_{s|r} r^2 / s^2.

The previous state r is the next lower noise level of the training schedule (the training
grid's own step, as DDPM's t - 1 is), 0 below its last level (zero variance: no signal, the
weight is 0 there as at DDPM's t = 0). The model's x0 comes from its velocity v = n - x0 as
x0 = x_s - s v: `PosteriorTerms` with ``sqrt_alphabar`` 1 and ``sqrt_one_minus_alphabar`` s,
so `posterior_mean` reads it unchanged. In velocity space DDLoss's weight
||mu_a - mu_b||^2 / (2 variance) per ||v_a - v_b||^2 is then

    coef1^2 s^2 / (2 variance) = (s - r)(s + r - 2 s r) / (2 r^2).
"""

from __future__ import annotations

from typing import Any

import torch

from backbones.base import FLOW_MATCHING
from backbones.flow_matching import training_timesteps
from losses.epsilon_space import PosteriorTerms, posterior_terms


def previous_sigmas(scheduler: Any, timesteps: torch.Tensor) -> torch.Tensor:
    """Each timestep's next lower noise level on the training grid (0 below the last)."""
    grid = training_timesteps(scheduler).to(timesteps.device, torch.float64)
    count = scheduler.config.num_train_timesteps
    index = (grid[None, :] - timesteps.double()[:, None]).abs().argmin(dim=1)
    lower = torch.cat([grid, grid.new_zeros(1)])[index + 1]  # the grid descends
    return lower / count


def flow_posterior_terms(scheduler: Any, timesteps: torch.Tensor) -> PosteriorTerms:
    """q(x_r | x_s, x0) of flow matching per sample (module docstring), fp32."""
    s = timesteps.double() / scheduler.config.num_train_timesteps
    r = previous_sigmas(scheduler, timesteps)
    a_s, a_r = 1.0 - s, 1.0 - r
    a_sr = a_s / a_r
    v_sr = s**2 - a_sr**2 * r**2
    return PosteriorTerms(
        coef1=(a_r * v_sr / s**2).float(),
        coef2=(a_sr * r**2 / s**2).float(),
        variance=(v_sr * r**2 / s**2).float(),
        sqrt_alphabar=torch.ones_like(s).float(),
        sqrt_one_minus_alphabar=s.float(),
    )


def is_flow_matching(module: Any) -> bool:
    return module.family.objective(module.noise_scheduler) == FLOW_MATCHING


def step_posterior(module: Any, timesteps: torch.Tensor) -> PosteriorTerms:
    """The reverse step's posterior of the module's objective (DDPM's or flow matching's)."""
    if is_flow_matching(module):
        return flow_posterior_terms(module.noise_scheduler, timesteps)
    return posterior_terms(module.noise_scheduler, timesteps)


def prediction_space_weight(terms: PosteriorTerms) -> torch.Tensor:
    """||mu_a - mu_b||^2 / (2 variance) per squared difference of two predictions:
    coef1^2 (d x0 / d prediction)^2 / (2 variance), 0 where the variance is 0."""
    slope = terms.sqrt_one_minus_alphabar / terms.sqrt_alphabar
    weight = terms.coef1.double() ** 2 * slope.double() ** 2 / (2.0 * terms.variance.double())
    return torch.where(terms.variance > 0, weight, torch.zeros_like(weight)).float()
