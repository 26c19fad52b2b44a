"""Temporarily give token ids past the tokenizer their own vectors (MLM's frozen ``[MASK]``).

The same swap-in-the-lookup mechanism as the concept tokens (`concept_tokens.py` beside this
file), wrapped around whatever lookup the text encoder has (concept vectors included), for one
call only: the
ids ``first_id, first_id + 1, ...`` read the rows of ``vectors``; all others go to the
installed lookup, so gradients reach trained concept vectors as in any other prompt.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from transformers import CLIPTextModel


class ExtraVectorsLookup(nn.Module):
    """Embedding lookup: ids >= ``first_id`` read ``vectors``, the rest the ``inner`` lookup."""

    def __init__(self, inner: nn.Module, first_id: int, vectors: torch.Tensor) -> None:
        super().__init__()
        self.inner = inner
        self.first_id = first_id
        self.vectors = vectors  # a plain tensor (not registered): it belongs to its owner

    @property
    def weight(self) -> torch.Tensor:
        return self.inner.weight

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        is_extra = input_ids >= self.first_id
        embeds = self.inner(input_ids.masked_fill(is_extra, 0))
        if not bool(is_extra.any()):
            return embeds
        rows = (input_ids - self.first_id).clamp(min=0, max=self.vectors.shape[0] - 1)
        extra = self.vectors[rows].to(embeds.dtype)
        return torch.where(is_extra.unsqueeze(-1), extra, embeds)


@contextmanager
def extra_vectors_in(
    text_encoder: CLIPTextModel, first_id: int, vectors: torch.Tensor
) -> Iterator[None]:
    """Within the block, ids from ``first_id`` on embed as the rows of ``vectors`` (n, D)."""
    inner = text_encoder.get_input_embeddings()
    text_encoder.set_input_embeddings(ExtraVectorsLookup(inner, first_id, vectors))
    try:
        yield
    finally:
        text_encoder.set_input_embeddings(inner)
