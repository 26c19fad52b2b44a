"""Checkpoints load weights-only, enforced here rather than left to a library's default, and
are written atomically (`AtomicCheckpointIO`, the trainer's checkpoint plugin in train.py).

A checkpoint of this project holds tensors, numbers, strings and plain containers (the trained
weights, optimizer and loop state). One that carries a pickled object could run code when
unpickled, so it is refused before Lightning opens it, with a message that says why.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from core.atomic import write_file_atomically


class UnsafeCheckpointError(ValueError):
    """The checkpoint needs full unpickling (it holds Python objects, not only tensors)."""


def check_loads_weights_only(path: str | Path) -> None:
    """Raise `UnsafeCheckpointError` (or FileNotFoundError) unless ``path`` loads weights-only."""
    load_weights_only(path)


def load_weights_only(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """The checkpoint, loaded weights-only; errors say what is wrong with it."""
    file = Path(path)
    if file.is_dir():
        raise IsADirectoryError(
            f"checkpoint {str(file)!r} is a folder; give a .ckpt file in it "
            f"(e.g. {str(file / 'last.ckpt')!r})."
        )
    if file.is_file() and not zipfile.is_zipfile(file):  # torch.save writes a zip archive
        raise ValueError(
            f"{str(file)!r} is not a PyTorch checkpoint (not a torch.save archive); give a "
            ".ckpt a run wrote (its checkpoints/ folder)."
        )
    if not file.is_file():
        raise FileNotFoundError(
            f"checkpoint {str(file)!r} does not exist; give a .ckpt of a run's checkpoints/ "
            "folder (last.ckpt is written by save_last)."
        )
    try:
        return torch.load(file, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UnsafeCheckpointError(
            f"checkpoint {str(file)!r} holds pickled Python objects, which this project never "
            f"writes and will not unpickle (it could run code): {first}. Resume from a "
            "checkpoint this project wrote."
        ) from error


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint beside its target and renames it into place, so a failure
    midway (a full disk) never leaves a truncated ``last.ckpt``; reads weights-only always.

    Lightning's own writer stages the bytes through a temporary file that may sit on another
    filesystem ($TMPDIR), where the final move is a copy that can fail halfway.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options.")
        write_file_atomically(path, lambda handle: torch.save(checkpoint, handle))

    def load_checkpoint(
        self, path: Any, map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        return load_weights_only(path, map_location if map_location is not None else "cpu")
