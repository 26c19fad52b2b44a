"""Checkpoints load weights-only, enforced here rather than left to a library's default.

A checkpoint of this project holds tensors, numbers, strings and plain containers (the trained
weights, optimizer and loop state). One that carries a pickled object could run code when
unpickled, so it is refused before Lightning opens it, with a message that says why.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch


class UnsafeCheckpointError(ValueError):
    """The checkpoint needs full unpickling (it holds Python objects, not only tensors)."""


def check_loads_weights_only(path: str | Path) -> None:
    """Raise `UnsafeCheckpointError` (or FileNotFoundError) unless ``path`` loads weights-only."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(
            f"checkpoint {str(file)!r} does not exist; give a .ckpt of a run's checkpoints/ "
            "folder (last.ckpt is written by save_last)."
        )
    try:
        torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UnsafeCheckpointError(
            f"checkpoint {str(file)!r} holds pickled Python objects, which this project never "
            f"writes and will not unpickle (it could run code): {first}. Resume from a "
            "checkpoint this project wrote."
        ) from error
