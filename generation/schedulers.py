"""Sampling schedulers by name, built from the model's own training noise schedule."""

from __future__ import annotations

from typing import Any

from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
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
    "flow_match_euler": FlowMatchEulerDiscreteScheduler,
}
# The samplers of flow-matching models (FLUX); the others sample DDPM-trained ones.
FLOW_SAMPLERS = frozenset({"flow_match_euler"})


def check_sampler_fits(name: str | None, flow_matching: bool, backbone: str) -> None:
    """A DDPM sampler cannot sample a flow-matching model, nor the reverse."""
    if name is None or (name in FLOW_SAMPLERS) == flow_matching:
        return
    fitting = sorted(FLOW_SAMPLERS if flow_matching else set(SAMPLING_SCHEDULERS) - FLOW_SAMPLERS)
    kind = "a flow-matching" if flow_matching else "a DDPM"
    raise ValueError(
        f"model.init_args.evaluation.scheduler is {name!r}, but the {backbone} backbone is "
        f"{kind} model; use one of {', '.join(fitting)}, or leave it unset (the model's own)."
    )


def check_scheduler_name(name: str) -> str:
    if name not in SAMPLING_SCHEDULERS:
        raise ValueError(
            f"Unknown sampling scheduler {name!r}; choose one of {sorted(SAMPLING_SCHEDULERS)}."
        )
    return name


def make_scheduler(name: str, training_config: Any) -> SchedulerMixin:
    """The named sampler over the training schedule's betas (so any of them fits the model)."""
    return SAMPLING_SCHEDULERS[check_scheduler_name(name)].from_config(training_config)
