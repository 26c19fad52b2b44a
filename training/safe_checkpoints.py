"""Checkpoints load weights-only, enforced here rather than left to a library's default, and
are written atomically (`AtomicCheckpointIO`, the trainer's checkpoint plugin in train.py).

A checkpoint of this project holds tensors, numbers, strings and plain containers (the trained
weights, optimizer and loop state). One that carries a pickled object could run code when
unpickled, so it is refused before Lightning opens it, with a message that says why. A damaged
one (a block whose bytes changed: the zip archive's checksums say so, or cut short) is told
apart from that, and named as damaged.
"""

from __future__ import annotations

import pickle
import zipfile
import zlib
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
        raise damaged(file, "not a torch.save archive: another kind of file, or cut short")
    if not file.is_file():
        raise FileNotFoundError(
            f"checkpoint {str(file)!r} does not exist; give a .ckpt of a run's checkpoints/ "
            "folder (last.ckpt is written by save_last)."
        )
    check_intact(file)
    try:
        return torch.load(file, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        said = str(error).split("WeightsUnpickler error:")[-1].strip() or type(error).__name__
        detail = said.splitlines()[0].split(". ")[0].rstrip(".")
        if not any(marker in detail for marker in REFUSED_OBJECT_MARKERS):
            raise damaged(file, detail) from error
        raise UnsafeCheckpointError(
            f"checkpoint {str(file)!r} holds pickled Python objects, which this project never "
            f"writes and will not unpickle (it could run code): {detail}. Resume from a "
            "checkpoint this project wrote."
        ) from error
    except (EOFError, UnicodeDecodeError) as error:
        raise damaged(file, f"{type(error).__name__}: {error}") from error
    except RuntimeError as error:  # torch's zip reader: "PytorchStreamReader failed ..."
        if "PytorchStreamReader" not in str(error):
            raise
        raise damaged(file, str(error).splitlines()[0]) from error


# What torch's weights-only unpickler says of an object it refuses (anything else it says of a
# pickle it cannot read: "Unsupported operand 127", a damaged one).
REFUSED_OBJECT_MARKERS = ("GLOBAL", "allowlisted")


def damaged(file: Path, detail: str) -> ValueError:
    return ValueError(
        f"checkpoint {str(file)!r} is damaged or is not a PyTorch checkpoint ({detail}); give "
        "another checkpoint of the run (its last.ckpt, or an earlier step's .ckpt in its "
        "checkpoints/ folder)."
    )


_INTACT: set[tuple[str, int, int]] = set()  # (path, size, mtime) checked already: read once


def check_intact(file: Path) -> None:
    """Every block of the checkpoint's zip archive matches its checksum (torch itself does not
    check them: a changed byte in a tensor's block would load as a changed weight)."""
    stat = file.stat()
    key = (str(file.resolve()), stat.st_size, stat.st_mtime_ns)
    if key in _INTACT:
        return
    try:
        with zipfile.ZipFile(file) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, EOFError, ValueError, NotImplementedError, zlib.error) as error:
        raise damaged(file, f"{type(error).__name__}: {error}") from error
    if bad is not None:
        raise damaged(file, f"its block {bad!r} does not match its checksum")
    _INTACT.add(key)


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
