"""Where the project keeps what it builds or computes once: tiny models, pretraining runs,
photo captions. ``$PERSONALIZE_CACHE``, or ``~/.cache/personalize``."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """$PERSONALIZE_CACHE or ~/.cache/personalize (read each call: tests move it); one that is
    (or lies inside) a file is a NotADirectoryError naming the variable, the path and the fix."""
    setting = os.environ.get("PERSONALIZE_CACHE")
    root = Path(setting or Path.home() / ".cache" / "personalize")
    existing = next((p for p in (root, *root.parents) if p.exists()), root)
    if existing.exists() and not existing.is_dir():
        name = "PERSONALIZE_CACHE" if setting else "the cache folder (PERSONALIZE_CACHE unset)"
        what = "is a file" if existing == root else f"lies inside a file, {str(existing)!r}"
        raise NotADirectoryError(
            f"{name} {str(root)!r} {what}, not a folder; point PERSONALIZE_CACHE at a folder "
            "(it is created if missing)."
        )
    return root
