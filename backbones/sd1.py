"""Stable Diffusion 1.x (and 2.x): one CLIP text encoder, a UNet reading its last hidden states,
DDPM epsilon or v targets, a VAE with a scale and no shift."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from backbones.base import BackboneFamily, ddim_for
from pretrained.sd15_random import SD15_RANDOM_NAME
from pretrained.stable_diffusion import SD1_PARTS
from pretrained.tiny_sd import TINY_MODEL_NAME
from step.encoding import TextEncoding


class StableDiffusion1(BackboneFamily):
    name: ClassVar[str] = "sd1"
    pipeline_class_names: ClassVar[tuple[str, ...]] = ("StableDiffusionPipeline",)
    tiny_name: ClassVar[str] = TINY_MODEL_NAME
    random_name: ClassVar[str] = SD15_RANDOM_NAME
    text_encoder_names: ClassVar[tuple[str, ...]] = ("text_encoder",)
    tokenizer_names: ClassVar[tuple[str, ...]] = ("tokenizer",)
    parts: ClassVar[dict[str, Any]] = SD1_PARTS
    display_name: ClassVar[str] = "Stable Diffusion"

    def encode_ids(
        self,
        encoders: list[nn.Module],
        input_ids: torch.Tensor,
        pad_ids: list[int],
        end_id: int,
        tokenizers: list[Any] | None = None,
    ) -> TextEncoding:
        """The text encoder's last hidden states, as SD 1.x's pipelines condition on."""
        return TextEncoding(encoders[0](input_ids).last_hidden_state, input_ids)

    def pipeline(self, module: Any, text_encoders: list[nn.Module]) -> Any:
        from diffusers import StableDiffusionPipeline

        return StableDiffusionPipeline(
            vae=module.vae,
            text_encoder=text_encoders[0],
            tokenizer=module.tokenizer,
            unet=module.unet,
            scheduler=ddim_for(module),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
