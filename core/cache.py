"""Where the project keeps what it builds or computes once: tiny models, pretraining runs,
photo captions. ``$PERSONALIZE_CACHE``, or ``~/.cache/personalize``."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """$PERSONALIZE_CACHE or ~/.cache/personalize (read each call: tests move it)."""
    return Path(os.environ.get("PERSONALIZE_CACHE") or Path.home() / ".cache" / "personalize")
