"""Sampling from a personalization module: a diffusers pipeline over its live components.

Mixed into `PersonalizationModule`, so ``self.vae``, ``self.unet``, ``self.family`` (whose
pipeline it is: backbones/), ``self.noise_scheduler`` and ``self.encode_text`` are the
module's (concept tokens included).
Sample grids, class images, ``test`` / ``predict`` and exports all sample through here, so
they agree on the sampler and its settings.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from generation.schedulers import make_scheduler

if TYPE_CHECKING:  # the pipeline module is imported when a run first samples
    from diffusers import DiffusionPipeline


class SamplingMixin:
    """``generate`` and the pipelines it builds, for `PersonalizationModule`."""

    def pipeline(self) -> DiffusionPipeline:
        """A diffusers pipeline over this module's live components (DDIM sampling)."""
        pipe = self.ddim_pipeline(*self.text_encoders)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def ddim_pipeline(self, *text_encoders: nn.Module) -> DiffusionPipeline:
        """This module's components with ``text_encoders`` (the family's, in its order) and
        DDIM, so sampling and export agree."""
        return self.family.pipeline(self, list(text_encoders))

    @torch.no_grad()
    def generate(
        self,
        prompts: list[str],
        seed: int = 0,
        num_inference_steps: int = 25,
        guidance_scale: float = 6.0,
        resolution: int | None = None,
        negative_prompt: str = "",
        seeds: list[int] | None = None,
        scheduler: str | None = None,
    ) -> torch.Tensor:
        """Images in [0, 1], shape (B, 3, H, W); image i uses seed + i (or seeds[i]).

        ``scheduler`` names a sampler of generation/schedulers.py (None: the pipeline's DDIM).
        """
        size = resolution or self.family.default_resolution(self.unet, self.vae)
        if seeds is not None and len(seeds) != len(prompts):
            raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts; give one each.")
        seeds = list(seeds) if seeds is not None else [seed + i for i in range(len(prompts))]
        generators = [torch.Generator().manual_seed(s) for s in seeds]
        pipe = self.pipeline()
        if scheduler is not None:
            pipe.scheduler = make_scheduler(scheduler, self.noise_scheduler.config)
        prompt_kwargs = self.prompt_call_kwargs(
            pipe, prompts, negative_prompt, size, num_inference_steps
        )
        images = pipe(
            **prompt_kwargs,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            height=size,
            width=size,
            generator=generators,
            output_type="pt",
        ).images
        return images.float().clamp(0, 1)

    def prompt_call_kwargs(
        self,
        pipe: DiffusionPipeline,
        prompts: list[str],
        negative_prompt: str,
        resolution: int,
        num_inference_steps: int,
    ) -> dict[str, Any]:
        """The pipeline call's prompt arguments: the encoded prompts (a baseline whose text
        changes with the timestep, NeTI, adds a per-step callback here)."""
        positive = self.encode_text(prompts)
        negative = self.encode_text([negative_prompt] * len(prompts))
        return self.family.prompt_kwargs(positive, negative, resolution)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)
