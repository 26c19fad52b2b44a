"""DINO-FG: DINO-I on the subject's foreground only (the MLM paper, after Kim et al. 2024).

Both the generated and the reference images are masked by a foreground mask of the subject
(see metrics/masks.py) before DINO: background pixels are set to ``background`` (black by
default), which removes the influence of the scene on subject fidelity.
"""

from __future__ import annotations

from typing import Any

import torch

from metrics.dino_i import DINOImageSimilarity
from metrics.masks import MaskSource, build_mask_source
from metrics.settings import DEFAULT_DINO, DEFAULT_GROUNDING_DINO, DEFAULT_SAM


class DINOForegroundSimilarity(DINOImageSimilarity):
    """DINO-I of masked images; the class word names what the mask source looks for."""

    key = "dino_fg"

    def __init__(
        self,
        model: str = DEFAULT_DINO,
        scale: float = 1.0,
        resize: int = 256,
        crop: int = 224,
        mask_source: str | MaskSource = "grounded_sam",
        grounding_dino_model: str = DEFAULT_GROUNDING_DINO,
        sam_model: str = DEFAULT_SAM,
        background: float = 0.0,
        encoder: Any = None,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            mask_source: ``grounded_sam`` (needs its two models), ``border_contrast`` (no
                weights), or a `MaskSource` instance.
            grounding_dino_model / sam_model: models of ``grounded_sam``.
            background: value (in [0, 1]) the pixels outside the mask get.
        """
        if isinstance(mask_source, str):
            options = {}
            if mask_source == "grounded_sam":
                options = {"grounding_model": grounding_dino_model, "sam_model": sam_model}
            mask_source = build_mask_source(mask_source, **options)
        super().__init__(model, scale, resize, crop, encoder, **kwargs)
        self.masks = mask_source
        self.background = background
        self.class_word = ""

    def apply_masks(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> the same with the background replaced."""
        with torch.no_grad():
            masks = self.masks(images, self.class_word).to(images)
        return images * masks + self.background * (1 - masks)

    def set_references(self, images: list[torch.Tensor], class_word: str) -> None:
        self.class_word = class_word
        masked = [self.apply_masks(image[None].to(self.device))[0] for image in images]
        super().set_references(masked, class_word)

    def update(self, images: torch.Tensor, prompts: list[str] | None = None) -> None:
        super().update(self.apply_masks(images), prompts)

    def definition(self) -> dict[str, Any]:
        return {
            **super().definition(),
            "masks": self.masks.definition(),
            "background": self.background,
            "masked": "generated and reference images, before DINO preprocessing",
        }
