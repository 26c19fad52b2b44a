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
    """Raise naming the first part whose weighted value is not finite (weights default to 1).

    One device-to-host sync for all parts; the per-part look happens only on failure."""
    weighted = {n: v.detach().float() * weights.get(n, 1.0) for n, v in parts.items()}
    if bool(torch.stack([torch.isfinite(v).all() for v in weighted.values()]).all()):
        return
    for name, value in weighted.items():
        if not bool(torch.isfinite(value).all()):
            raise NonFiniteError(
                f"step {step}: loss part {name!r} (x weight {weights.get(name, 1.0):g}) is "
                f"{_state(value)}; the run stops here, and the last checkpoint and export "
                "on disk are from before it. Lower the learning rate or that part's weight, "
                "then resume from the last checkpoint."
            )


def check_trained_finite(named: Iterable[tuple[str, nn.Parameter]], step: int) -> None:
    """Raise naming the first trained parameter that holds a NaN or an infinity (one sync for
    all of them; frozen weights are not read)."""
    trained = [(n, p.detach()) for n, p in named if p.requires_grad]
    if not trained or bool(torch.stack([torch.isfinite(p).all() for _, p in trained]).all()):
        return
    for name, parameter in trained:
        if not bool(torch.isfinite(parameter).all()):
            raise NonFiniteError(
                f"step {step}: the optimizer step made trained weight {name!r} "
                f"{_state(parameter)}; the run stops before saving it, and the last "
                "checkpoint and export on disk are from before it. Lower the learning rate, "
                "then resume from the last checkpoint."
            )
