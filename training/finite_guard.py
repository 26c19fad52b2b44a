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


def _first_non_finite(named: list[tuple[str, torch.Tensor]]) -> tuple[str, torch.Tensor] | None:
    """The first (name, tensor) holding a NaN or an infinity; one host sync when all are fine.

    The fast test is each tensor's norm in one fused call (a NaN or inf anywhere makes it
    non-finite); only when one is not finite (or a norm of huge finite values overflowed) is
    every tensor checked element by element.
    """
    if not named:
        return None
    norms = torch._foreach_norm([t.detach().float() for _, t in named])
    if bool(torch.stack(norms).isfinite().all()):
        return None
    return next(((n, t) for n, t in named if not bool(torch.isfinite(t).all())), None)


def check_loss_parts(parts: dict[str, torch.Tensor], weights: dict[str, float], step: int) -> None:
    """Raise naming the first part whose weighted value is not finite (weights default to 1)."""
    weighted = [(n, v.detach().float() * weights.get(n, 1.0)) for n, v in parts.items()]
    found = _first_non_finite(weighted)
    if found is not None:
        name, value = found
        raise NonFiniteError(
            f"step {step}: loss part {name!r} (x weight {weights.get(name, 1.0):g}) is "
            f"{_state(value)}; the run stops here, and the last checkpoint and export "
            "on disk are from before it. Lower the learning rate or that part's weight, "
            "then resume from the last checkpoint."
        )


def check_trained_finite(named: Iterable[tuple[str, nn.Parameter]], step: int) -> None:
    """Raise naming the first trained parameter that holds a NaN or an infinity (one sync for
    all of them; frozen weights are not read)."""
    found = _first_non_finite([(n, p.detach()) for n, p in named if p.requires_grad])
    if found is not None:
        name, parameter = found
        raise NonFiniteError(
            f"step {step}: the optimizer step made trained weight {name!r} "
            f"{_state(parameter)}; the run stops before saving it, and the last "
            "checkpoint and export on disk are from before it. Lower the learning rate, "
            "then resume from the last checkpoint."
        )
