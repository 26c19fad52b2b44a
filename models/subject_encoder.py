"""Photos of a subject -> concept-token vectors: a frozen CLIP image encoder and a small mapper.

ACCORD's VisualEncoder baseline is IP-Adapter reduced to its image encoder: IP-Adapter's
projection (a linear map of the CLIP image embedding to ``num_vectors`` tokens, then LayerNorm)
is the only part that trains, and its tokens replace the concept token's embeddings in the
prompt instead of feeding an extra image cross-attention. With IP-Adapter's SD 1.5 encoder
(ViT-H/14, 1024-d embeddings) and 4 tokens of 768 that is 3.1 M weights, the size ACCORD lists.

One change from IP-Adapter, because the tokens now enter the text encoder's input: the
LayerNorm's scale and shift start at the word embeddings' per-dimension spread and the
initializer word's embedding, so the first tokens look like embeddings of words near the class
word instead of unit-variance vectors, tens of times larger than any real token.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch
import torch.nn.functional as F
import transformers
from PIL import Image
from torch import nn
from transformers import (
    AutoConfig,
    CLIPConfig,
    CLIPImageProcessor,
    CLIPVisionModelWithProjection,
)
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from core.images import resize_and_crop, to_tensor
from pretrained.resolve import resolve_pretrained
from pretrained.tiny_flux import TINY_FLUX_NAME
from pretrained.tiny_sd import TINY_CLIP_NAME, TINY_MODEL_NAME
from pretrained.tiny_sdxl import TINY_SDXL_NAME

# IP-Adapter's image encoder for SD 1.5 (OpenCLIP ViT-H/14 as CLIPVisionModelWithProjection),
# and for SDXL (OpenCLIP ViT-bigG/14, IP-Adapter's sdxl_models).
IP_ADAPTER_ENCODER = ("h94/IP-Adapter", "models/image_encoder")
IP_ADAPTER_SDXL_ENCODER = ("h94/IP-Adapter", "sdxl_models/image_encoder")
FLUX_IMAGE_ENCODER = ("openai/clip-vit-large-patch14", None)  # XLabs' FLUX IP-Adapter's


def default_image_encoder(
    pretrained_model_name_or_path: str, family: str = "sd1"
) -> tuple[str, str | None]:
    """tiny-clip for a tiny pipeline (offline), else IP-Adapter's encoder of the family
    (FLUX's IP-Adapter, XLabs', reads CLIP ViT-L/14's image features)."""
    if pretrained_model_name_or_path in (TINY_MODEL_NAME, TINY_SDXL_NAME, TINY_FLUX_NAME):
        return TINY_CLIP_NAME, None
    if family == "flux":
        return FLUX_IMAGE_ENCODER
    return IP_ADAPTER_SDXL_ENCODER if family == "sdxl" else IP_ADAPTER_ENCODER


def chosen_image_encoder(
    pretrained_model_name_or_path: str,
    family: str,
    name_or_path: str | None,
    subfolder: str | None,
) -> tuple[str, str | None, CLIPVisionModelWithProjection, list[float], list[float]]:
    """The image encoder a module reads: the given one, else its family's default; returns
    (name, subfolder, encoder, normalisation mean, std)."""
    if name_or_path is None:
        name_or_path, default_subfolder = default_image_encoder(
            pretrained_model_name_or_path, family
        )
        subfolder = subfolder or default_subfolder
    encoder, mean, std = load_image_encoder(name_or_path, subfolder)
    return name_or_path, subfolder, encoder, mean, std


def load_image_encoder(
    name_or_path: str, subfolder: str | None = None
) -> tuple[CLIPVisionModelWithProjection, list[float], list[float]]:
    """The vision tower with its projection, and the normalisation it was trained with.

    Accepts a CLIPVisionModelWithProjection folder (IP-Adapter's) or a whole CLIPModel one
    (openai/clip-vit-large-patch14, tiny-clip), whose projection size lives in the top config.
    """
    path = resolve_pretrained(name_or_path)
    where = {"subfolder": subfolder} if subfolder else {}
    config = AutoConfig.from_pretrained(path, **where)
    if isinstance(config, CLIPConfig):
        vision = config.vision_config
        vision.projection_dim = config.projection_dim
        config = vision
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # a CLIPModel's text weights are unused here
    try:
        encoder = CLIPVisionModelWithProjection.from_pretrained(path, config=config, **where)
    finally:
        transformers.logging.set_verbosity(verbosity)
    try:
        processor = CLIPImageProcessor.from_pretrained(path, **where)
        mean, std = list(processor.image_mean), list(processor.image_std)
    except OSError:  # IP-Adapter's folder ships no preprocessor config: CLIP's own values
        mean, std = list(OPENAI_CLIP_MEAN), list(OPENAI_CLIP_STD)
    return encoder, mean, std


class TokenMapper(nn.Module):
    """Image embedding (N, E) -> token vectors (N, num_vectors, D): IP-Adapter's projection,
    or with ``hidden_dim`` its MLP variant (Linear, GELU, Linear), then LayerNorm."""

    def __init__(
        self, feature_dim: int, token_dim: int, num_vectors: int, hidden_dim: int | None = None
    ) -> None:
        super().__init__()
        self.num_vectors, self.token_dim = num_vectors, token_dim
        out = num_vectors * token_dim
        if hidden_dim is None:
            self.proj: nn.Module = nn.Linear(feature_dim, out)
        else:
            self.proj = nn.Sequential(
                nn.Linear(feature_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, out)
            )
        self.norm = nn.LayerNorm(token_dim)

    def start_near(self, center: torch.Tensor, spread: torch.Tensor) -> None:
        """Start the outputs at ``center`` +- ``spread`` per dimension (see module docstring)."""
        with torch.no_grad():
            self.norm.bias.copy_(center.float())
            self.norm.weight.copy_(spread.float())

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        tokens = self.proj(features).view(-1, self.num_vectors, self.token_dim)
        return self.norm(tokens)


class SubjectEncoder(nn.Module):
    """Frozen CLIP image encoder + trainable `TokenMapper`; pixels in [-1, 1] -> vectors."""

    def __init__(
        self,
        image_encoder: CLIPVisionModelWithProjection,
        mapper: TokenMapper,
        mean: Sequence[float],
        std: Sequence[float],
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder.requires_grad_(False).eval()
        self.mapper = mapper
        self.image_size = int(image_encoder.config.image_size)
        # Not saved: they come with the image encoder, and checkpoints hold what trains.
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> SubjectEncoder:
        super().train(mode)
        self.image_encoder.eval()  # frozen: always in eval mode
        return self

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """CLIP image embeddings (N, E) of square images in [-1, 1], any size."""
        pixels = (pixel_values.float() + 1.0) / 2.0
        if pixels.shape[-1] != self.image_size or pixels.shape[-2] != self.image_size:
            size = (self.image_size, self.image_size)
            pixels = F.interpolate(pixels, size, mode="bicubic", antialias=True).clamp(0, 1)
        pixels = (pixels - self.mean) / self.std
        dtype = self.image_encoder.dtype
        with torch.no_grad():
            return self.image_encoder(pixel_values=pixels.to(dtype)).image_embeds.float()

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Token vectors (N, num_vectors, D), one set per image; gradients reach the mapper."""
        return self.mapper(self.image_features(pixel_values))

    def prepare(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Photos -> (N, 3, S, S) in [-1, 1]: centre square at the encoder's size."""
        rng = random.Random(0)  # unused by a centre crop; resize_and_crop wants one
        squares = [resize_and_crop(im.convert("RGB"), self.image_size, False, rng) for im in images]
        return torch.stack([to_tensor(square) for square in squares]).to(self.mean.device)

    @torch.no_grad()
    def embed_subject(self, images: Sequence[Image.Image] | torch.Tensor) -> torch.Tensor:
        """A subject's token vectors (num_vectors, D): the mean over its photos' vectors."""
        pixels = images if isinstance(images, torch.Tensor) else self.prepare(images)
        if pixels.shape[0] == 0:
            raise ValueError("embed_subject needs at least one photo of the subject.")
        was_training = self.training
        self.eval()
        try:
            return self(pixels.to(self.mean.device)).mean(dim=0)
        finally:
            self.train(was_training)
