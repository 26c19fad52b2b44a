"""LightningModules: the shared base and one file per baseline (shared parts in components/).

Names resolve on first use (PEP 562), so configs' ``class_path: models.CustomDiffusion`` works
while importing ``models.components`` (which the losses do) pulls in no baseline: the
baselines import the losses, and an eager import here would close that loop.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "PersonalizationModule": "models.base",
    "CustomDiffusion": "models.custom_diffusion",
    "DreamBooth": "models.dreambooth",
    "LoRA": "models.lora",
    "TextualInversion": "models.textual_inversion",
    "VisualEncoder": "models.visual_encoder",
    "XTI": "models.xti",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'models' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))
