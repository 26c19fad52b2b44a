"""tiny-sdxl loads with diffusers' own SDXL pipeline; sdxl-random has the published sizes."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import StableDiffusionXLPipeline
from transformers import CLIPTokenizer

from pretrained.sdxl_random import PUBLISHED_PARAMETERS, sdxl_builders
from pretrained.tiny_tokenizer import write_tiny_clip_tokenizer


def test_tiny_sdxl_is_an_sdxl_pipeline(tiny_sdxl_path: Path) -> None:
    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl_path)
    unet = pipe.unet.config
    assert unet.addition_embed_type == "text_time"
    pooled = pipe.text_encoder_2.config.projection_dim
    # The addition embedding reads the pooled text and six size numbers, as SDXL's does.
    assert unet.projection_class_embeddings_input_dim == 6 * unet.addition_time_embed_dim + pooled
    hidden = pipe.text_encoder.config.hidden_size + pipe.text_encoder_2.config.hidden_size
    assert unet.cross_attention_dim == hidden
    assert pipe.tokenizer_2.pad_token == "!" and pipe.tokenizer.pad_token == "<|endoftext|>"
    assert pipe.vae.config.scaling_factor == 0.13025
    image = pipe(
        "a photo of a dog", num_inference_steps=2, height=32, width=32, output_type="pt",
        generator=torch.Generator().manual_seed(0),
    ).images  # fmt: skip
    assert image.shape == (1, 3, 32, 32) and torch.isfinite(image).all()


def test_sdxl_random_components_have_the_published_parameter_counts(tmp_path: Path) -> None:
    write_tiny_clip_tokenizer(tmp_path)
    tokenizer = CLIPTokenizer.from_pretrained(tmp_path)
    with torch.device("meta"):
        counts = {
            name: sum(p.numel() for p in build().parameters())
            for name, build in sdxl_builders(tokenizer).items()
        }
    assert counts == PUBLISHED_PARAMETERS
    # stabilityai/stable-diffusion-xl-base-1.0: a 2.6B UNet; 817M in the two text encoders.
    assert round(counts["unet"] / 1e9, 1) == 2.6
    assert round((counts["text_encoder"] + counts["text_encoder_2"]) / 1e6) == 818
