"""Prompt states that change with the timestep, through a diffusers pipeline's public API.

A pipeline encodes its prompts once; a baseline whose text depends on the timestep (ProSpect's
stages, NeTI's (t, layer) mapper) gives the call its first step's states and a
``callback_on_step_end`` that swaps in the states of each next step before that step runs
(the pipeline reads ``prompt_embeds`` back from the callback; with classifier-free guidance it
holds the negative prompts' states first, then the prompts').
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch


class StepStates(ABC):
    """A ``callback_on_step_end`` giving each denoising step its own prompt states."""

    tensor_inputs: ClassVar[list[str]] = ["prompt_embeds"]

    @abstractmethod
    def states_at(self, timestep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The prompts' and the negative prompts' states at ``timestep``."""

    def __call__(
        self, pipe: Any, step: int, timestep: Any, kwargs: dict[str, Any]
    ) -> dict[str, torch.Tensor]:
        timesteps = pipe.scheduler.timesteps
        if step + 1 >= len(timesteps):
            return {}
        positive, negative = self.states_at(timesteps[step + 1])
        states = torch.cat([negative, positive]) if pipe.do_classifier_free_guidance else positive
        return {"prompt_embeds": states.to(kwargs["prompt_embeds"].dtype)}

    def call_kwargs(self, pipe: Any, num_inference_steps: int) -> dict[str, Any]:
        """Keyword arguments for ``pipe(...)`` with the same ``num_inference_steps``: the first
        step's states and this callback."""
        pipe.scheduler.set_timesteps(num_inference_steps)  # what the call sets: its first t
        positive, negative = self.states_at(pipe.scheduler.timesteps[0])
        return {
            "prompt_embeds": positive,
            "negative_prompt_embeds": negative,
            "callback_on_step_end": self,
            "callback_on_step_end_tensor_inputs": list(self.tensor_inputs),
        }
