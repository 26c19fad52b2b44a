"""CLIP-I: subject fidelity, mean cosine of CLIP image features over generated x reference."""

from __future__ import annotations

from typing import Any

from metrics.base import MeanPairwiseCosine
from metrics.clip_model import ClipImageEncoder, load_clip, processor_definition
from metrics.settings import DEFAULT_CLIP


class CLIPImageSimilarity(MeanPairwiseCosine):
    """CLIP-I with the same CLIP (and processor) as CLIP-T."""

    key = "clip_i"

    def __init__(
        self, model: str = DEFAULT_CLIP, scale: float = 1.0, encoder: Any = None, **kwargs: Any
    ) -> None:
        """``encoder`` (images -> features) replaces the CLIP model; tests pass their own."""
        self.model_name = model
        if encoder is None:
            encoder = ClipImageEncoder(*load_clip(model))
        super().__init__(encoder, scale, **kwargs)

    def definition(self) -> dict[str, Any]:
        processor = getattr(self.encoder, "processor", None)
        return {
            "model": self.model_name,
            "features": "CLIP projected image embedding",
            "preprocessing": processor_definition(processor) if processor else "custom encoder",
            "formula": "mean over all generated x reference pairs of cos(f_gen, f_ref)",
            "scale": self.scale,
        }
