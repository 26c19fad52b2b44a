"""Callbacks: sample images, exports (analysis callbacks join here)."""

from callbacks.export import ExportWeights
from callbacks.sample_images import SampleImages

__all__ = ["ExportWeights", "SampleImages"]
