"""The frozen CLIP image tower CLIF contrasts the text with: the one matching the text encoder.

SD's text encoder is the text tower of a CLIP model (openai/clip-vit-large-patch14 for SD 1.x,
tiny-clip for tiny-sd); its image tower, visual projection and learned logit scale are loaded
from the same model through transformers' ``from_pretrained``. Images arrive as the DataModule
makes them ([-1, 1], square) and are resized and normalised the way CLIP's processor does.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPModel
from transformers.utils import logging as hf_logging
from transformers.utils.constants import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from pretrained.resolve import resolve_pretrained
from pretrained.tiny_sd import TINY_CLIP_NAME


def _normalisation(path: str) -> tuple[list[float], list[float]]:
    """The image processor's mean and std (read from its config: the processor class itself
    wants torchvision), CLIP's published ones when the folder has none."""
    config = Path(path) / "preprocessor_config.json"
    if config.is_file():
        values = json.loads(config.read_text())
        return values.get("image_mean", OPENAI_CLIP_MEAN), values.get("image_std", OPENAI_CLIP_STD)
    return list(OPENAI_CLIP_MEAN), list(OPENAI_CLIP_STD)


class ClipImageFeatures(nn.Module):
    """pixels (B, 3, H, W) in [-1, 1] -> CLIP image embeddings (B, projection_dim), fp32."""

    def __init__(self, clip_model: str) -> None:
        super().__init__()
        path = resolve_pretrained(
            clip_model, "the clif loss's clip_model", tiny_name=TINY_CLIP_NAME
        )
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            clip = CLIPModel.from_pretrained(path)
            mean_values, std_values = _normalisation(path)
        except (OSError, ValueError) as error:
            raise OSError(
                f"Could not load the CLIP image tower from {clip_model!r}: {error}\nGive the "
                "CLIP model whose text tower your Stable Diffusion uses (already in the local "
                f"Hugging Face cache or a folder), or {TINY_CLIP_NAME!r} with the tiny pipeline."
            ) from error
        finally:
            hf_logging.set_verbosity(verbosity)
        self.name = clip_model
        self.vision_model, self.visual_projection = clip.vision_model, clip.visual_projection
        # CLIP's own temperature: logits = exp(logit_scale) * cosine (100 for OpenAI's CLIP).
        self.logit_scale = float(clip.logit_scale.detach().exp().clamp(max=100.0))
        self.image_size = int(clip.config.vision_config.image_size)
        mean = torch.tensor(mean_values, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(std_values, dtype=torch.float32).view(1, 3, 1, 1)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> ClipImageFeatures:
        return super().train(False)  # frozen: always in eval mode

    @torch.no_grad()
    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        images = (pixels.float() + 1.0) / 2.0
        if images.shape[-1] != self.image_size or images.shape[-2] != self.image_size:
            size = (self.image_size, self.image_size)
            images = F.interpolate(
                images, size, mode="bicubic", antialias=True, align_corners=False
            )
        images = (images.clamp(0, 1) - self.mean) / self.std
        with torch.autocast(images.device.type, enabled=False):
            pooled = self.vision_model(pixel_values=images).pooler_output
            return self.visual_projection(pooled).float()
