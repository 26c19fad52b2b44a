"""What a regularizer may read and call on the module it regularizes.

Losses are written against this view, not against the baselines' base class: the losses room
comes before the models room (docs/DESIGN.md, "The rooms and their order"), so a loss never
imports a baseline, not even for an annotation. `models.base.PersonalizationModule` satisfies
the view (a test checks each member exists there); a loss that needs more adds it here first,
which is where a reviewer sees the contract grow.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn

from backbones.base import BackboneFamily
from core.concept import ConceptSpec
from step.encoding import TextEncoding
from step.requests import TokenIdEncoder


class ModelView(TokenIdEncoder, Protocol):
    """The documented members of a personalization module that regularizers use."""

    # the frozen pretrained parts (SDXL's second tokenizer/encoder are read through `family`)
    tokenizer: Any
    text_encoder: nn.Module
    noise_scheduler: Any
    pretrained_model_name_or_path: str
    concepts: list[ConceptSpec]
    family: BackboneFamily

    @property
    def text_encoders(self) -> list[nn.Module]:
        """The family's text encoders in its order (SD 1.x one, SDXL two)."""
        ...

    @property
    def device(self) -> torch.device: ...

    @property
    def global_step(self) -> int: ...

    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        """Padded token ids on the module's device, concept tokens expanded."""
        ...

    def encode_text(self, prompts: list[str]) -> TextEncoding:
        """Prompts through the text path, concept vectors injected, with gradient."""
        ...

    def predict_noise(
        self,
        noisy_latents: torch.Tensor,
        timesteps: torch.Tensor,
        encoder_states: torch.Tensor | TextEncoding,
        time_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One denoiser call, in the scheduler's parameterisation."""
        ...

    def text_projection(self, clip_model: str | None = None) -> nn.Linear:
        """CLIP's frozen text projection for the pooled text features."""
        ...

    def step_generator(self, step: int, salt: int = 0) -> torch.Generator:
        """A generator seeded by (step, rank, salt) for draws not tied to a sample."""
        ...

    def all_gather(self, data: Any, group: Any = None, sync_grads: bool = False) -> Any:
        """Lightning's gather over the processes (a leading world dimension)."""
        ...
