"""Sampling schedulers by name, built from the model's own training noise schedule."""

from __future__ import annotations

from typing import Any

from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
    UniPCMultistepScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

SAMPLING_SCHEDULERS: dict[str, type[SchedulerMixin]] = {
    "ddim": DDIMScheduler,
    "ddpm": DDPMScheduler,
    "pndm": PNDMScheduler,
    "euler": EulerDiscreteScheduler,
    "euler_ancestral": EulerAncestralDiscreteScheduler,
    "dpm_solver": DPMSolverMultistepScheduler,
    "unipc": UniPCMultistepScheduler,
}


def check_scheduler_name(name: str) -> str:
    if name not in SAMPLING_SCHEDULERS:
        raise ValueError(
            f"Unknown sampling scheduler {name!r}; choose one of {sorted(SAMPLING_SCHEDULERS)}."
        )
    return name


def make_scheduler(name: str, training_config: Any) -> SchedulerMixin:
    """The named sampler over the training schedule's betas (so any of them fits the model)."""
    return SAMPLING_SCHEDULERS[check_scheduler_name(name)].from_config(training_config)
