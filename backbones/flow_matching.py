"""Flow matching (rectified flow) as a family's training objective: FLUX.1 (and SD3) train this.

A sample at noise level sigma in [0, 1] is the straight line between the image latent and the
noise, ``x_sigma = (1 - sigma) x0 + sigma * noise``, and the denoiser predicts the velocity
``noise - x0`` (what d x_sigma / d sigma is). Each sample's sigma is drawn as diffusers'
FLUX/SD3 scripts draw it: ``u`` from ``compute_density_for_timestep_sampling`` (uniform,
logit-normal or "mode"), the training schedule's timestep at index ``u * N`` (so the schedule's
static shift, schnell's, applies; dev's dynamic shift is for sampling only), sigma = t / N; the
per-sample loss is weighted by ``compute_loss_weighting_for_sd3`` (none, sigma_sqrt, cosmap).
The draws come from each sample's own generator (step/draws.py), so resume and DDP stay exact.
docs/DESIGN.md, "Flow matching", derives the papers' DDPM-specific losses on this objective.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import torch
from diffusers.training_utils import (
    compute_density_for_timestep_sampling,
    compute_loss_weighting_for_sd3,
)

from backbones.base import FLOW_MATCHING, BackboneFamily
from backbones.flow_matching_settings import FlowMatchingSettings

if TYPE_CHECKING:
    from step.draws import SampleDraws

def training_timesteps(scheduler: Any) -> torch.Tensor:
    """The training schedule's N timesteps, from a fresh copy of its config (a pipeline's
    ``set_timesteps`` on the live scheduler must not move training draws)."""
    count = scheduler.config.num_train_timesteps
    return type(scheduler).from_config(scheduler.config).timesteps[:count].float()


class FlowMatchingFamily(BackboneFamily):
    """The objective of a flow-matching family; a subclass adds encoders, denoiser, pipeline."""

    settings: FlowMatchingSettings = FlowMatchingSettings()

    def configured(self, settings: FlowMatchingSettings) -> FlowMatchingFamily:
        family = copy.copy(self)
        family.settings = settings
        return family

    def objective(self, scheduler: Any) -> str:
        return FLOW_MATCHING

    def draw_timesteps(self, draws: SampleDraws, scheduler: Any) -> torch.Tensor:
        """Timesteps t = N sigma (float), one per sample, from its own generator."""
        s = self.settings
        u = draws.each(
            lambda generator: compute_density_for_timestep_sampling(
                s.weighting_scheme,
                1,
                logit_mean=s.logit_mean,
                logit_std=s.logit_std,
                mode_scale=s.mode_scale,
                device=generator.device,
                generator=generator,
            )
        )
        timesteps = training_timesteps(scheduler)
        indices = (u * len(timesteps)).long().clamp(max=len(timesteps) - 1).cpu()
        return timesteps[indices].to(u.device)

    def sigmas(self, scheduler: Any, timesteps: torch.Tensor) -> torch.Tensor:
        """sigma = t / N, shape (B,)."""
        return timesteps.float() / scheduler.config.num_train_timesteps

    def noised_and_target(
        self,
        scheduler: Any,
        latents: torch.Tensor,
        noise: torch.Tensor,
        timesteps: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """((1 - sigma) x0 + sigma noise, noise - x0)."""
        sigma = self.sigmas(scheduler, timesteps).view(-1, *[1] * (latents.dim() - 1))
        noisy = (1.0 - sigma) * latents + sigma * noise
        return noisy.to(latents.dtype), noise - latents

    def clean_estimate(
        self,
        scheduler: Any,
        noisy: torch.Tensor,
        prediction: torch.Tensor,
        timesteps: torch.Tensor,
    ) -> torch.Tensor:
        """x0 = x_sigma - sigma v (the velocity is noise - x0)."""
        sigma = self.sigmas(scheduler, timesteps).view(-1, *[1] * (noisy.dim() - 1))
        return noisy - sigma.to(noisy) * prediction

    def loss_weights(self, scheduler: Any, timesteps: torch.Tensor) -> torch.Tensor:
        return compute_loss_weighting_for_sd3(
            self.settings.weighting_scheme, self.sigmas(scheduler, timesteps)
        )
