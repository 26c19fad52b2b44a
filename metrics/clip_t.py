"""CLIP-T: prompt fidelity, the cosine of CLIP image and prompt features (torchmetrics' CLIPScore).

The prompt scored is the generation prompt with the concept token replaced by the class word
("a <v1> dog on the beach" -> "a dog on the beach"), as the papers do. CLIPScore reports
``max(100 * mean cosine, 0)``; we report that divided by 100 and multiplied by ``scale``: the
papers' 0.30 with scale 1 (ClassDiffusion, the MLM paper), their 30.0 with scale 100 (ACCORD).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torchmetrics.multimodal import CLIPScore

from metrics.base import EvalMetric
from metrics.clip_model import load_clip, processor_definition
from metrics.images import to_uint8
from metrics.settings import DEFAULT_CLIP


class CLIPTextScore(CLIPScore, EvalMetric):
    """CLIP-T over all generated images; ``update(images, prompts)`` pairs them one to one."""

    key = "clip_t"

    def __init__(
        self,
        model: str = DEFAULT_CLIP,
        scale: float = 1.0,
        model_and_processor: Callable[[], tuple[Any, Any]] | None = None,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            model: CLIP hub id, folder or ``tiny-clip``.
            scale: multiplies the cosine (1: cosine; 100: percent, as ACCORD prints it).
            model_and_processor: CLIPScore's callable form; replaces ``model`` (tests).
        """
        self.model_name = model
        super().__init__(
            model_name_or_path=model_and_processor or (lambda: load_clip(model)), **kwargs
        )
        self.model.requires_grad_(False)
        self.scale = scale

    def update(self, images: torch.Tensor, prompts: list[str]) -> None:  # type: ignore[override]
        if len(images) != len(prompts):
            raise ValueError(f"CLIP-T got {len(images)} images for {len(prompts)} prompts.")
        # CLIPScore's processor rescales by 1/255, so it gets 8-bit images.
        super().update(list(to_uint8(images)), list(prompts))

    def compute(self) -> torch.Tensor:
        return super().compute() / 100.0 * self.scale

    def definition(self) -> dict[str, Any]:
        return {
            "model": self.model_name,
            "features": "CLIP projected image and text embeddings (get_image/text_features)",
            "text": "generation prompt with the concept token replaced by the class word",
            "preprocessing": processor_definition(self.processor),
            "formula": "max(mean over images of cos(image, prompt), 0) (CLIPScore / 100)",
            "scale": self.scale,
        }
