"""Foreground masks of the subject for DINO-FG, from a pluggable source.

A mask source maps images (B, 3, H, W) in [0, 1] and the class word to masks (B, 1, H, W) in
{0, 1}. ``grounded_sam`` is the MLM paper's (Grounded-SAM): Grounding-DINO finds the box of
"<class word>." and SAM segments inside it, both through transformers. ``border_contrast``
needs no weights, so the whole path runs offline: the background colour is the median of the
image border, and the foreground is what differs from it by more than an Otsu threshold.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from metrics.images import to_pil
from metrics.settings import DEFAULT_GROUNDING_DINO, DEFAULT_SAM, check_choice
from pretrained.grounded_sam import (
    best_boxes,
    best_masks,
    grounding_text,
    load_grounding_dino,
    load_sam,
    sam_masks,
)


class MaskSource(nn.Module):
    """Base: ``forward(images, class_word) -> masks``; ``definition()`` for the results."""

    name = "mask_source"

    def forward(self, images: torch.Tensor, class_word: str) -> torch.Tensor:
        raise NotImplementedError

    def definition(self) -> dict[str, Any]:
        raise NotImplementedError


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """The threshold that maximises the between-class variance of a 1-D sample."""
    hist, edges = np.histogram(values, bins=bins)
    centers = (edges[:-1] + edges[1:]) / 2  # each bin's value
    weight_low = np.cumsum(hist)
    weight_high = weight_low[-1] - weight_low
    sum_low = np.cumsum(hist * centers)
    mean_low = sum_low / np.maximum(weight_low, 1)
    mean_high = (sum_low[-1] - sum_low) / np.maximum(weight_high, 1)
    between = weight_low * weight_high * (mean_low - mean_high) ** 2
    return float(edges[int(np.argmax(between)) + 1])  # upper edge of the last low bin


class BorderContrastMasks(MaskSource):
    """Weight-free: foreground = pixels far (Otsu) from the median colour of the border."""

    name = "border_contrast"

    def __init__(self, border_fraction: float = 0.06) -> None:
        super().__init__()
        self.border_fraction = border_fraction

    def forward(self, images: torch.Tensor, class_word: str) -> torch.Tensor:
        masks = [self._one(image) for image in images]
        return torch.stack(masks).to(images.device)

    def _one(self, image: torch.Tensor) -> torch.Tensor:
        pixels = image.detach().float().cpu()
        height, width = pixels.shape[-2:]
        band = max(1, round(self.border_fraction * min(height, width)))
        border = torch.cat(
            [
                pixels[:, :band].reshape(3, -1),
                pixels[:, -band:].reshape(3, -1),
                pixels[:, :, :band].reshape(3, -1),
                pixels[:, :, -band:].reshape(3, -1),
            ],
            dim=1,
        )
        background = border.median(dim=1).values.view(3, 1, 1)
        distance = (pixels - background).norm(dim=0)
        if float(distance.max() - distance.min()) < 1e-6:  # flat image: nothing stands out
            return torch.ones(1, height, width)
        mask = distance > otsu_threshold(distance.flatten().numpy())
        if not bool(mask.any()):
            return torch.ones(1, height, width)
        return mask.float()[None]

    def definition(self) -> dict[str, Any]:
        return {
            "source": self.name,
            "method": "pixels whose RGB distance to the median border colour exceeds an Otsu "
            f"threshold; border band {self.border_fraction} of the shorter side",
        }


class GroundedSamMasks(MaskSource):
    """Grounding-DINO box of "<class word>." (highest score), then SAM's best mask in it."""

    name = "grounded_sam"

    def __init__(
        self, grounding_model: str = DEFAULT_GROUNDING_DINO, sam_model: str = DEFAULT_SAM
    ) -> None:
        super().__init__()
        self.grounding_name, self.sam_name = grounding_model, sam_model
        self.detector, self.detector_processor = load_grounding_dino(
            grounding_model, "DINO-FG (Grounding-DINO)", "evaluation.metrics.grounding_dino_model"
        )
        self.sam, self.sam_processor = load_sam(
            sam_model, "DINO-FG (SAM)", "evaluation.metrics.sam_model"
        )

    @torch.no_grad()
    def forward(self, images: torch.Tensor, class_word: str) -> torch.Tensor:
        pil = to_pil(images)
        texts = [grounding_text(class_word)] * len(pil)
        boxes, _ = best_boxes(self.detector, self.detector_processor, pil, texts)
        found = sam_masks(self.sam, self.sam_processor, pil, boxes=[[b.tolist()] for b in boxes])
        chosen = torch.stack([best_masks(masks, scores)[0] for masks, scores in found])
        chosen = chosen.float()[:, None]
        empty = chosen.flatten(1).sum(dim=1) == 0
        chosen[empty] = 1.0  # SAM found nothing: score the whole image rather than a black one
        return chosen.to(images.device)

    def definition(self) -> dict[str, Any]:
        return {
            "source": self.name,
            "grounding_dino": self.grounding_name,
            "sam": self.sam_name,
            "method": "highest-scoring Grounding-DINO box for '<class word>.', SAM multimask "
            "output with the best predicted IoU, mask threshold 0; empty mask -> whole image",
        }


MASK_SOURCES = {"border_contrast": BorderContrastMasks, "grounded_sam": GroundedSamMasks}


def build_mask_source(name: str, **options: Any) -> MaskSource:
    """A mask source by name; options go to its constructor (model names for grounded_sam)."""
    return MASK_SOURCES[check_choice("mask source", name, tuple(MASK_SOURCES))](**options)
