"""Cut-Mix-Unmix (SVDiff, Han et al. 2023, section 3.3): two concepts stitched into one sample,
and the attention penalty that keeps each concept's token on its own half.

The pieces SVDiff's training step uses (models/svdiff.py): the stitched image and prompt, the
cross-attention maps recorded beside each layer with gradient, and the Unmix loss over them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from core.concept import ConceptSpec


def cut_mix_prompt(left: ConceptSpec, right: ConceptSpec) -> str:
    """The stitched sample's prompt, naming which concept stands on which side."""
    return f"photo of a {left.phrase} on the left and a {right.phrase} on the right"


def stitch(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """(..., H, W) images of one size -> the central W//2 columns of ``left`` beside the central
    W - W//2 columns of ``right``: each concept keeps its middle, where a subject photo has it."""
    width = left.shape[-1]
    left_width, right_width = width // 2, width - width // 2
    start_left, start_right = (width - left_width) // 2, (width - right_width) // 2
    return torch.cat(
        [
            left[..., start_left : start_left + left_width],
            right[..., start_right : start_right + right_width],
        ],
        dim=-1,
    )


def layer_grid(queries: int, latent_size: tuple[int, int]) -> tuple[int, int]:
    """A cross-attention layer's (h, w): the latent grid halved (rounding up, as the UNet's
    stride-2 convolutions do) until it holds ``queries`` positions."""
    height, width = latent_size
    while height * width > queries:
        height, width = -(-height // 2), -(-width // 2)
    if height * width != queries:
        raise ValueError(f"{queries} attention queries are no downsampling of {latent_size}.")
    return height, width


def unmix_loss(
    layer_maps: list[torch.Tensor],
    latent_size: tuple[int, int],
    left_tokens: torch.Tensor,
    right_tokens: torch.Tensor,
) -> torch.Tensor:
    """The Unmix regularizer on N stitched samples (see the module doc).

    ``layer_maps``: per cross-attention layer, head-averaged probabilities (N, h*w, L) over the
    text tokens; ``left_tokens`` / ``right_tokens``: (N, L) masks of the token positions of the
    concept on the left / right. Entries regularized: left tokens over the right half, right
    tokens over the left half."""
    losses = []
    for probs in layer_maps:
        count, queries, length = probs.shape
        height, width = layer_grid(queries, latent_size)
        columns = torch.arange(width, device=probs.device)
        left_half = (columns < width // 2)[None, None, :, None]
        right_half = (columns >= width - width // 2)[None, None, :, None]
        wrong = (right_half & left_tokens[:, None, None, :].to(probs.device)) | (
            left_half & right_tokens[:, None, None, :].to(probs.device)
        )
        wrong = wrong.expand(count, height, width, length).reshape(count, queries, length)
        squares = probs.float().square() * wrong
        entries = wrong.sum(dim=(1, 2)).clamp(min=1)
        losses.append((squares.sum(dim=(1, 2)) / entries).mean())
    return torch.stack(losses).mean()


@dataclass(frozen=True)
class Stitched:
    """One cut-mix sample of a batch: its row and the concepts on its left and right."""

    row: int
    left: int
    right: int


class CrossAttentionRecorder:
    """While active, each cross-attention layer's head-averaged probabilities for ``rows`` of
    the UNet batch, computed beside the layer (its own to_q / to_k, so the shifted weights)
    with gradient; the layer's own output is untouched."""

    def __init__(self, layers: dict[str, nn.Module], rows: list[int]) -> None:
        self.layers, self.rows = layers, rows
        self.maps: list[torch.Tensor] = []
        self._handles: list[Any] = []

    def __enter__(self) -> CrossAttentionRecorder:
        for layer in self.layers.values():
            self._handles.append(layer.register_forward_pre_hook(self._record, with_kwargs=True))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _record(self, attn: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        hidden = args[0] if args else kwargs["hidden_states"]
        context = kwargs.get("encoder_hidden_states")
        if context is None:
            context = args[1] if len(args) > 1 else hidden
        rows = torch.tensor(self.rows, device=hidden.device)
        hidden, context = hidden[rows], context[rows]
        if attn.norm_cross is not None:
            context = attn.norm_encoder_hidden_states(context)
        query = attn.head_to_batch_dim(attn.to_q(hidden))
        key = attn.head_to_batch_dim(attn.to_k(context))
        probs = attn.get_attention_scores(query, key, None)
        self.maps.append(probs.reshape(len(self.rows), attn.heads, *probs.shape[1:]).mean(dim=1))
