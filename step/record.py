"""What one training step computed, handed to every regularizer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from step.encoding import TextEncoding
    from step.requests import TextRequest


@dataclass
class StepRecord:
    """Tensors of one denoising step. Shapes: latents (B, C, h, w); timesteps (B,);
    encoder_hidden_states (B, L, D); loss_mask (B, 1, h, w) at latent resolution."""

    latents: torch.Tensor
    noisy_latents: torch.Tensor
    timesteps: torch.Tensor
    noise: torch.Tensor
    target: torch.Tensor
    model_pred: torch.Tensor
    encoder_hidden_states: torch.Tensor
    input_ids: torch.Tensor
    loss_mask: torch.Tensor
    batch: dict[str, Any]
    # Per-layer text states (B, n_layers * L, D) when each UNet layer reads its own (XTI/P+);
    # None when every layer reads encoder_hidden_states. See TextEncoding.layer_states.
    layer_states: torch.Tensor | None = None
    # Prior preservation: the class half of the same UNet call (None when it is off);
    # the fields above stay the instance half, which is what regularizers see.
    prior: StepRecord | None = None
    # The family's extra conditioning of the step's UNet call (SDXL: pooled text (B, P) and
    # size ids (B, 6)), so a loss can make its own calls on the same images; None for SD 1.x.
    text_embeds: torch.Tensor | None = None
    time_ids: torch.Tensor | None = None
    # SDXL: the first (CLIP ViT-L) encoder's last-layer end-of-text state (B, D1), what CLIP's
    # text projection applies to (see TextEncoding.clip_pooled); None where the states are it.
    clip_pooled: torch.Tensor | None = None
    # The first (CLIP) encoder's last-layer states (B, L, D1) where the conditioning is another's,
    # and whether encoder_hidden_states has input_ids' positions (not FLUX's T5 states).
    clip_states: torch.Tensor | None = None
    states_follow_ids: bool = True
    # Each sample's weight in the denoising loss (flow matching's weighting scheme); None: 1.
    loss_weights: torch.Tensor | None = None
    # Regularizers' text requests with their encodings from the step's text pass, by the
    # requester's id (see `Regularizer.requested_text`).
    requested_text: dict[int, list[tuple[TextRequest, TextEncoding]]] = field(default_factory=dict)
