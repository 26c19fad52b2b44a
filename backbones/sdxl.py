"""Stable Diffusion XL: two CLIP text encoders, pooled text and size conditioning.

As diffusers' SDXL pipeline and training scripts condition the UNet: each encoder's penultimate
hidden states, concatenated along the features (768 + 1280 = 2048 for SDXL base); the second
encoder's projected end-of-text feature as the pooled ``text_embeds``; and ``time_ids``, six
numbers per image: its original size (height, width), the crop's top-left corner in the resized
image, and the target size. Both encoders read one set of token ids: their tokenizers share
CLIP's vocabulary and differ in padding only ("!" for the second), so the second's ids are the
first's re-padded after the end-of-text, and a concept token has the same id in both.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from torch import nn
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from backbones.base import BackboneFamily, ddim_for
from pretrained.sdxl_random import SDXL_RANDOM_NAME
from pretrained.tiny_sdxl import TINY_SDXL_NAME
from step.encoding import TextEncoding

SDXL_PARTS: dict[str, Any] = {
    "tokenizer": CLIPTokenizer,
    "tokenizer_2": CLIPTokenizer,
    "text_encoder": CLIPTextModel,
    "text_encoder_2": CLIPTextModelWithProjection,
    "vae": AutoencoderKL,
    "unet": UNet2DConditionModel,
    "scheduler": DDPMScheduler,  # the training schedule, read from SDXL's scheduler/ config
}
# The batch keys of the size conditioning (datamodules/extras/size_conditioning.py).
SIZE_KEYS = frozenset({"original_size", "crop_top_left"})


def repad_after_end(input_ids: torch.Tensor, end_id: int, pad_id: int) -> torch.Tensor:
    """Every position after each row's first end-of-text becomes ``pad_id``."""
    positions = torch.arange(input_ids.shape[1], device=input_ids.device)
    first_end = (input_ids == end_id).int().argmax(dim=-1, keepdim=True)
    return torch.where(positions > first_end, torch.full_like(input_ids, pad_id), input_ids)


class StableDiffusionXL(BackboneFamily):
    name: ClassVar[str] = "sdxl"
    pipeline_class_names: ClassVar[tuple[str, ...]] = ("StableDiffusionXLPipeline",)
    tiny_name: ClassVar[str] = TINY_SDXL_NAME
    random_name: ClassVar[str] = SDXL_RANDOM_NAME
    text_encoder_names: ClassVar[tuple[str, ...]] = ("text_encoder", "text_encoder_2")
    tokenizer_names: ClassVar[tuple[str, ...]] = ("tokenizer", "tokenizer_2")
    parts: ClassVar[dict[str, Any]] = SDXL_PARTS
    display_name: ClassVar[str] = "SDXL"
    lora_writer: ClassVar[str] = "StableDiffusionXLPipeline"
    embedding_keys: ClassVar[tuple[str, ...]] = ("clip_l", "clip_g")  # A1111's, ComfyUI's

    def encode_ids(
        self,
        encoders: list[nn.Module],
        input_ids: torch.Tensor,
        pad_ids: list[int],
        end_id: int,
        tokenizers: list[Any] | None = None,
    ) -> TextEncoding:
        """Both encoders' penultimate states, concatenated, and the second's ``text_embeds``
        as the encoder computes it (with SDXL's legacy config, at the highest token id, as
        diffusers' pipeline gets it too)."""
        first, second = encoders
        second_ids = repad_after_end(input_ids, end_id, pad_ids[1])
        output_1 = first(input_ids, output_hidden_states=True)
        output_2 = second(second_ids, output_hidden_states=True)
        hidden = torch.cat([output_1.hidden_states[-2], output_2.hidden_states[-2]], dim=-1)
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)
        ends = (input_ids == end_id).int().argmax(dim=-1)
        clip_pooled = output_1.last_hidden_state[rows, ends]  # at the real end-of-text
        return TextEncoding(
            hidden,
            input_ids,
            text_embeds=output_2.text_embeds,
            clip_pooled=clip_pooled,
            clip_states=output_1.last_hidden_state,
        )

    def batch_keys(self) -> frozenset[str]:
        return SIZE_KEYS

    def time_ids(
        self,
        batch: dict[str, Any] | None,
        rows: int,
        resolution: int | tuple[int, int],
        device: torch.device,
    ) -> torch.Tensor:
        """(rows, 6): a row the batch gives no sizes for (class images, a batch built by hand)
        is an uncropped image of the training size (height, width; an aspect bucket's)."""
        height, width = (resolution, resolution) if isinstance(resolution, int) else resolution
        ids = torch.tensor([[height, width, 0, 0, height, width]], device=device)
        ids = ids.repeat(rows, 1)
        if batch is not None and "original_size" in batch:
            given = len(batch["original_size"])
            ids[:given, 0:2] = torch.as_tensor(batch["original_size"], device=device)
            ids[:given, 2:4] = torch.as_tensor(batch["crop_top_left"], device=device)
        return ids

    def added_conditioning(
        self, text: TextEncoding | torch.Tensor, time_ids: torch.Tensor | None
    ) -> dict[str, Any]:
        if not isinstance(text, TextEncoding) or text.text_embeds is None or time_ids is None:
            raise ValueError(
                "SDXL's UNet needs the pooled text embedding and the size ids: pass the "
                "TextEncoding itself (not its states) and time_ids to predict_noise."
            )
        embeds = text.text_embeds
        return {"added_cond_kwargs": {"text_embeds": embeds, "time_ids": time_ids.to(embeds)}}

    def pipeline(self, module: Any, text_encoders: list[nn.Module]) -> Any:
        from diffusers import StableDiffusionXLPipeline

        return StableDiffusionXLPipeline(
            vae=module.vae,
            text_encoder=text_encoders[0],
            text_encoder_2=text_encoders[1],
            tokenizer=module.tokenizer,
            tokenizer_2=module.tokenizer_2,
            unet=module.unet,
            scheduler=ddim_for(module),
            add_watermarker=False,
        )

    def prompt_kwargs(
        self, positive: TextEncoding, negative: TextEncoding, resolution: int
    ) -> dict[str, Any]:
        return {
            **super().prompt_kwargs(positive, negative, resolution),
            "pooled_prompt_embeds": positive.text_embeds,
            "negative_pooled_prompt_embeds": negative.text_embeds,
        }
