"""LightningModules: the shared base and one file per baseline (parts with one user beside it).

Names resolve on first use (PEP 562), so configs' ``class_path: models.CustomDiffusion`` works
and importing one baseline (or ``models.base`` for a type) loads no other. ``load_export(pipe,
folder)`` installs any export whose ``export.json`` names a baseline with a ``load_into``.
"""

from __future__ import annotations

from core.lazy import lazy_names

_HOMES = {
    "PersonalizationModule": "models.base",
    "CLIFMultiConceptLoRA": "models.clif_decoder",
    "CLIFTextTuning": "models.clif_text",
    "CustomDiffusion": "models.custom_diffusion",
    "DreamBooth": "models.dreambooth",
    "EDLoRA": "models.mix_of_show",
    "IPAdapter": "models.ip_adapter",
    "LoRA": "models.lora",
    "MixOfShowFused": "models.mix_of_show_fused",
    "NeTI": "models.neti",
    "ProSpect": "models.prospect",
    "SVDiff": "models.svdiff",
    "TextualInversion": "models.textual_inversion",
    "VisualEncoder": "models.visual_encoder",
    "XTI": "models.xti",
    # an export folder's export.json: writing one with the export, loading by it
    "export_with_manifest": "models.exports_loading",
    "load_export": "models.exports_loading",
}

__all__ = sorted(_HOMES)
__getattr__, __dir__ = lazy_names(__name__, _HOMES, globals())
