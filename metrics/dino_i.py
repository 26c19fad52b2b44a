"""DINO-I: subject fidelity with self-supervised ViT features (DreamBooth's metric).

DINO ViT-S/16's CLS token of the last layer (after its final layer norm), not a pooler: DINO
checkpoints have none trained. Preprocessing as DreamBooth's evaluation: shorter side to 256
(bicubic), centre crop 224, ImageNet mean and std.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from metrics.base import MeanPairwiseCosine
from metrics.images import IMAGENET_MEAN, IMAGENET_STD, imagenet_preprocess
from metrics.settings import DEFAULT_DINO
from pretrained.eval_models import load_eval_model

if TYPE_CHECKING:
    from transformers import ViTModel


class DinoEncoder(nn.Module):
    """CLS features of a ViT on ImageNet-preprocessed images."""

    def __init__(self, model: ViTModel, resize: int = 256, crop: int = 224) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.resize, self.crop = resize, crop

    def forward(self, images: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        device = next(self.model.parameters()).device
        pixels = imagenet_preprocess(list(images), self.resize, self.crop).to(device)
        return self.model(pixel_values=pixels).last_hidden_state[:, 0]


def load_dino(name: str, what: str = "DINO-I / DINO-FG") -> ViTModel:
    """A ViT without pooling layer from a hub id, folder or ``tiny-dino``."""

    def loader(path: str) -> ViTModel:
        from transformers import ViTModel

        return ViTModel.from_pretrained(path, add_pooling_layer=False)

    return load_eval_model(name, loader, what, "evaluation.metrics.dino_model")


def dino_definition(name: str, resize: int, crop: int) -> dict[str, Any]:
    return {
        "model": name,
        "features": "last_hidden_state[:, 0] (CLS token after the final layer norm; no pooler)",
        "preprocessing": {
            "resize_shorter_side": resize,
            "interpolation": "bicubic (torch, antialias)",
            "center_crop": crop,
            "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD),
        },
    }


class DINOImageSimilarity(MeanPairwiseCosine):
    """DINO-I: mean cosine of DINO CLS features over all generated x reference pairs."""

    key = "dino_i"

    def __init__(
        self,
        model: str = DEFAULT_DINO,
        scale: float = 1.0,
        resize: int = 256,
        crop: int = 224,
        encoder: Any = None,
        **kwargs: Any,
    ) -> None:
        """``encoder`` (images -> features) replaces the DINO model; tests pass their own."""
        self.model_name, self.resize, self.crop = model, resize, crop
        if encoder is None:
            encoder = DinoEncoder(load_dino(model), resize, crop)
        super().__init__(encoder, scale, **kwargs)

    def definition(self) -> dict[str, Any]:
        return {
            **dino_definition(self.model_name, self.resize, self.crop),
            "formula": "mean over all generated x reference pairs of cos(f_gen, f_ref)",
            "scale": self.scale,
        }
