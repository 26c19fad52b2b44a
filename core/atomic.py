"""Writes that either complete or leave the previous file or folder as it was.

A file is written beside its target (same folder, so the same filesystem) and renamed over it;
a folder of several files is built whole in a staging folder and swapped in (`swap_in`).
A failure midway (a full disk, a crash) leaves a hidden partial entry at most, never a
half-written target.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def write_file_atomically(path: str | Path, write: Callable[[BinaryIO], None]) -> None:
    """``write(handle)`` into a partial file beside ``path``, synced, then renamed onto it."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
    try:
        with partial.open("wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def swap_in(staging: Path, final: Path) -> None:
    """Put the finished ``staging`` folder at ``final`` (an older one there is removed)."""
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    if final.exists():
        os.replace(final, old)
    os.replace(staging, final)
    shutil.rmtree(old, ignore_errors=True)
