"""Callbacks: sample images, exports, and the analysis ones (drift, attention, text)."""

from callbacks.attention_maps import AttentionMaps
from callbacks.export import ExportWeights
from callbacks.interrupt import SaveOnInterrupt
from callbacks.sample_images import SampleImages
from callbacks.semantic_drift import SemanticDrift
from callbacks.text_semantics import TextSemantics

__all__ = [
    "AttentionMaps",
    "ExportWeights",
    "SampleImages",
    "SaveOnInterrupt",
    "SemanticDrift",
    "TextSemantics",
]
