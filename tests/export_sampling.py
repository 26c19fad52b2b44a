"""One fixed, small sampling setting for export tests: a module's own generation and a
diffusers pipeline that loaded its export must produce the same images under it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline

from models.base import PersonalizationModule

PROMPT = "a photo of a <v1> toy"
STEPS, GUIDANCE = 3, 6.0


def fresh_pipe(path: Path) -> StableDiffusionPipeline:
    """The saved tiny pipeline with DDIM, the sampler `PersonalizationModule.generate` uses."""
    pipe = StableDiffusionPipeline.from_pretrained(path, safety_checker=None)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def pipe_sample(
    pipe: StableDiffusionPipeline, prompt: str | None = PROMPT, **kwargs: Any
) -> torch.Tensor:
    """Images of ``prompt`` (or of ``prompt_embeds`` in kwargs, with prompt None), seed 0."""
    pipe.set_progress_bar_config(disable=True)
    return pipe(
        prompt,
        generator=torch.Generator().manual_seed(0),
        num_inference_steps=STEPS,
        guidance_scale=GUIDANCE,
        height=32,
        width=32,
        output_type="pt",
        **kwargs,
    ).images


def module_sample(module: PersonalizationModule, prompt: str = PROMPT) -> torch.Tensor:
    """The module's own generation under the same setting."""
    return module.generate([prompt], seed=0, num_inference_steps=STEPS, guidance_scale=GUIDANCE)
