"""Callbacks: sample images, exports, and the analysis ones (drift, attention, text).

Names resolve on first use (core/lazy.py), so a run imports scikit-learn (t-SNE) and
matplotlib (plots) only when its config names a callback that draws with them.
"""

from __future__ import annotations

from core.lazy import lazy_names

_HOMES = {
    "AttentionMaps": "callbacks.attention_maps",
    "AugmentedDataGrids": "callbacks.augmented_data",
    "ExportWeights": "callbacks.export",
    "SampleImages": "callbacks.sample_images",
    "SaveOnInterrupt": "callbacks.interrupt",
    "SemanticDrift": "callbacks.semantic_drift",
    "TextSemantics": "callbacks.text_semantics",
}

__all__ = sorted(_HOMES)
__getattr__, __dir__ = lazy_names(__name__, _HOMES, globals())
