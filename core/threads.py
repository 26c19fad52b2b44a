"""torch's CPU thread count from PERSONALIZE_NUM_THREADS, when set (scripts/benchmark_quickstart.py
measures what a choice does on a shared machine)."""

from __future__ import annotations

import os

import torch

THREADS_VARIABLE = "PERSONALIZE_NUM_THREADS"


def configure_torch_threads() -> int | None:
    """Apply PERSONALIZE_NUM_THREADS (a positive integer) to torch; None when it is unset."""
    value = os.environ.get(THREADS_VARIABLE, "").strip()
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{THREADS_VARIABLE} must be a positive integer, got {value!r}.")
    torch.set_num_threads(int(value))
    return int(value)
