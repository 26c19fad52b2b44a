"""torch's CPU thread count from PERSONALIZE_NUM_THREADS, when set (scripts/benchmark_quickstart.py
measures what a choice does on a shared machine)."""

from __future__ import annotations

import os

import torch

THREADS_VARIABLE = "PERSONALIZE_NUM_THREADS"


# The tiny pipeline's ops are too small to gain from a second thread, and a second CPU-bound
# job on the machine slows two threads far more than one (scripts/benchmark_quickstart.py
# measures it): tiny runs on the CPU use one thread.
TINY_RUN_THREADS = 1


def configure_torch_threads(tiny_cpu_run: bool = False) -> int | None:
    """Apply PERSONALIZE_NUM_THREADS (a positive integer) to torch, else TINY_RUN_THREADS for
    a tiny-pipeline run on the CPU; None (torch's default) otherwise."""
    value = os.environ.get(THREADS_VARIABLE, "").strip()
    if not value:
        if tiny_cpu_run:
            torch.set_num_threads(TINY_RUN_THREADS)
            return TINY_RUN_THREADS
        return None
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{THREADS_VARIABLE} must be a positive integer, got {value!r}.")
    torch.set_num_threads(int(value))
    return int(value)
