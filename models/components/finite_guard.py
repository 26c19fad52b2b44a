"""Stop a run at the first non-finite loss part or trained weight, before anything is written.

A NaN or inf (a learning rate of 1e10, a loss weight of 1e39) would otherwise train on
silently and be saved into every later checkpoint and export. The base module checks each
weighted loss part right after the step computes it, and the trained weights right after the
optimizer moves them (before the step's checkpoint callbacks run), so the last checkpoint and
export on disk are the last good ones.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


class NonFiniteError(FloatingPointError):
    """A loss part or a trained weight became NaN or infinite; the message says which, where."""


def _state(value: torch.Tensor) -> str:
    return "nan" if bool(torch.isnan(value).any()) else "infinite"


def check_loss_parts(parts: dict[str, torch.Tensor], weights: dict[str, float], step: int) -> None:
    """Raise naming the first part whose weighted value is not finite (weights default to 1)."""
    for name, value in parts.items():
        weighted = value.detach().float() * weights.get(name, 1.0)
        if not bool(torch.isfinite(weighted).all()):
            raise NonFiniteError(
                f"step {step}: loss part {name!r} (x weight {weights.get(name, 1.0):g}) is "
                f"{_state(weighted)}; the run stops here, and the last checkpoint and export "
                "on disk are from before it. Lower the learning rate or that part's weight, "
                "then resume from the last checkpoint."
            )


def check_trained_finite(named: Iterable[tuple[str, nn.Parameter]], step: int) -> None:
    """Raise naming the first trained parameter that holds a NaN or an infinity."""
    for name, parameter in named:
        if parameter.requires_grad and not bool(torch.isfinite(parameter.detach()).all()):
            raise NonFiniteError(
                f"step {step}: the optimizer step made trained weight {name!r} "
                f"{_state(parameter.detach())}; the run stops before saving it, and the last "
                "checkpoint and export on disk are from before it. Lower the learning rate, "
                "then resume from the last checkpoint."
            )
