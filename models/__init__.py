"""LightningModules: the shared base and one file per baseline (shared parts in components/).

Names resolve on first use (PEP 562), so configs' ``class_path: models.CustomDiffusion`` works
while importing ``models.components`` (which the losses do) pulls in no baseline: the
baselines import the losses, and an eager import here would close that loop.
"""

from __future__ import annotations

from core.lazy import lazy_names

_HOMES = {
    "PersonalizationModule": "models.base",
    "CLIFMultiConceptLoRA": "models.clif_decoder",
    "CLIFTextTuning": "models.clif_text",
    "CustomDiffusion": "models.custom_diffusion",
    "DreamBooth": "models.dreambooth",
    "LoRA": "models.lora",
    "TextualInversion": "models.textual_inversion",
    "VisualEncoder": "models.visual_encoder",
    "XTI": "models.xti",
}

__all__ = sorted(_HOMES)
__getattr__, __dir__ = lazy_names(__name__, _HOMES, globals())
