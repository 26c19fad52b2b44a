"""Random masking and the masked cross-entropy of MLM (diverse-context paper, Eqs. 4-5).

Shared by the contextualizer's pretraining and the ``mlm`` regularizer: each eligible token is
masked independently with probability rho (15%, as in BERT and the paper); every masked token
is replaced by the ``[MASK]`` id; the loss is the cross-entropy at masked positions only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def prompt_positions(input_ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """True at the prompt's own tokens: after start-of-text, before the first end-of-text."""
    first_eos = (input_ids == eos_token_id).int().argmax(dim=-1, keepdim=True)
    positions = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
    return (positions > 0) & (positions < first_eos)


def trim_padding(input_ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """Drop the columns after the longest prompt's first end-of-text token.

    Exact for MLM: CLIP's text encoder is causal and psi ignores padding, so the states at the
    prompt's positions do not depend on how much padding follows; it saves the padded compute.
    """
    first_eos = (input_ids == eos_token_id).int().argmax(dim=-1)
    return input_ids[:, : int(first_eos.max()) + 1]


def occurrences(input_ids: torch.Tensor, sequence: list[int]) -> torch.Tensor:
    """True at every position covered by an occurrence of ``sequence`` in a row."""
    hits = torch.zeros_like(input_ids, dtype=torch.bool)
    width = len(sequence)
    if width == 0 or width > input_ids.shape[1]:
        return hits
    target = torch.tensor(sequence, device=input_ids.device)
    windows = input_ids.unfold(1, width, 1)  # (B, L - width + 1, width)
    starts = (windows == target).all(dim=-1)
    for offset in range(width):
        hits[:, offset : offset + starts.shape[1]] |= starts
    return hits


def draw_mask(
    eligible: torch.Tensor, probability: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Bernoulli(probability) at each eligible position; never elsewhere."""
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"mask_probability must be in [0, 1], got {probability}.")
    draws = torch.rand(eligible.shape, generator=generator, device=eligible.device)
    return eligible & (draws < probability)


def apply_mask(input_ids: torch.Tensor, masked: torch.Tensor, mask_token_id: int) -> torch.Tensor:
    return input_ids.masked_fill(masked, mask_token_id)


def masked_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, masked: torch.Tensor
) -> torch.Tensor:
    """Mean cross-entropy over masked positions (all rows pooled); exactly 0 if none are.

    ``logits``: (B, L, V) over all positions, or (N, V) already taken at the N masked ones
    (`Contextualizer` with ``positions=masked``).
    """
    if not bool(masked.any()):
        return logits.new_zeros((), dtype=torch.float32)
    at_masked = logits if logits.dim() == 2 else logits[masked]
    return F.cross_entropy(at_masked.float(), targets[masked])
