"""Gram-D: style distance (ACCORD), the Gram-matrix style loss of Gatys et al. (2016).

For feature maps F_l (N_l channels x M_l positions) of VGG-19 at relu1_1 ... relu5_1, the Gram
matrix is G_l = F_l F_l^T and the distance between images a and b is Gatys' style loss

    D(a, b) = sum_l w_l / (4 N_l^2 M_l^2) * sum_ij (G_l(a)_ij - G_l(b)_ij)^2,   w_l = 1/5.

Gram-D is the mean of D over all generated x reference pairs (lower = closer style). Its
absolute size depends on the VGG weights and input scaling (ImageNet-normalised inputs here),
so compare values within one table only. No torchvision here: VGG-19 is our own module with
torchvision's layout (pretrained/vgg.py), loading torchvision's or timm's weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from metrics.base import EvalMetric
from metrics.images import IMAGENET_MEAN, IMAGENET_STD, imagenet_preprocess
from metrics.settings import DEFAULT_VGG
from pretrained.eval_models import load_eval_model
from pretrained.vgg import STYLE_LAYERS, VGGFeatures


def _load_vgg(path: str) -> VGGFeatures:
    if Path(path).exists():
        return VGGFeatures.from_pretrained(path)
    from huggingface_hub import snapshot_download

    # A hub id: only what is already in the local cache (no download from here).
    folder = snapshot_download(
        path, allow_patterns=["*.safetensors", "*.json"], local_files_only=True
    )
    return VGGFeatures.from_pretrained(folder)


class VGGEncoder(nn.Module):
    """Style-layer activations of ImageNet-preprocessed images."""

    def __init__(self, model: VGGFeatures, resize: int = 256, crop: int = 224) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.resize, self.crop = resize, crop

    def forward(self, images: torch.Tensor | list[torch.Tensor]) -> list[torch.Tensor]:
        device = next(self.model.parameters()).device
        pixels = imagenet_preprocess(list(images), self.resize, self.crop).to(device)
        return self.model(pixels, STYLE_LAYERS)


def normalised_grams(features: list[torch.Tensor]) -> list[torch.Tensor]:
    """G_l / (N_l M_l) per layer, (B, N, N): then D = sum_l w_l ||Ga - Gb||^2 / 4."""
    grams = []
    for feature in features:
        batch, channels, height, width = feature.shape
        flat = feature.double().reshape(batch, channels, height * width)
        grams.append(flat @ flat.transpose(1, 2) / (channels * height * width))
    return grams


class GramDistance(EvalMetric):
    """Mean Gatys style distance over all generated x reference pairs."""

    key = "gram_d"
    higher_is_better = False

    def __init__(
        self,
        model: str = DEFAULT_VGG,
        resize: int = 256,
        crop: int = 224,
        encoder: Any = None,
        **kwargs: Any,
    ) -> None:
        """``encoder`` (images -> list of feature maps) replaces VGG; tests pass their own."""
        super().__init__(**kwargs)
        if encoder is None:
            vgg = load_eval_model(model, _load_vgg, "Gram-D", "evaluation.metrics.gram_model")
            encoder = VGGEncoder(vgg, resize, crop)
        self.encoder, self.model_name, self.resize, self.crop = encoder, model, resize, crop
        self.add_state("distance_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("pairs", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.reference_grams: list[torch.Tensor] | None = None

    def set_references(self, images: list[torch.Tensor], class_word: str) -> None:
        if len(images) == 0:
            raise ValueError("gram_d needs at least one reference image.")
        with torch.no_grad():
            per_image = [
                normalised_grams(self.encoder(image[None].to(self.device))) for image in images
            ]
        self.reference_grams = [torch.cat(layer) for layer in zip(*per_image)]

    def update(self, images: torch.Tensor, prompts: list[str] | None = None) -> None:
        if self.reference_grams is None:
            raise RuntimeError("gram_d: call set_references() before update().")
        with torch.no_grad():
            generated = normalised_grams(self.encoder(images))
        weight = 1.0 / len(generated)
        distance = 0.0
        for gen, ref in zip(generated, self.reference_grams):
            diff = gen[:, None] - ref.to(gen.device)[None]  # (B, R, N, N)
            distance = distance + weight * diff.pow(2).sum(dim=(2, 3)) / 4
        self.distance_sum += distance.sum()
        self.pairs += distance.numel()

    def compute(self) -> torch.Tensor:
        return self.distance_sum / self.pairs

    def definition(self) -> dict[str, Any]:
        return {
            "model": self.model_name,
            "features": f"VGG-19 activations at {', '.join(STYLE_LAYERS)} (torchvision layout)",
            "preprocessing": {
                "resize_shorter_side": self.resize,
                "interpolation": "bicubic (torch, antialias)",
                "center_crop": self.crop,
                "mean": list(IMAGENET_MEAN),
                "std": list(IMAGENET_STD),
            },
            "formula": "mean over generated x reference pairs of sum_l (1/5) / (4 N_l^2 M_l^2) "
            "||G_l(gen) - G_l(ref)||_F^2, G_l = F_l F_l^T (Gatys et al. 2016 style loss)",
            "scale": "raw (lower is better)",
        }
