"""SDXL base 1.0's shapes with random weights (``sdxl-random``), for memory and speed offline.

Built from the published configs of stabilityai/stable-diffusion-xl-base-1.0 (unet/, vae/,
text_encoder/ (CLIP ViT-L/14's text tower), text_encoder_2/ (OpenCLIP ViT-bigG/14's, with its
projection)), seeded and saved as a diffusers folder (about 14 GB in fp32) that loads through the
ordinary ``from_pretrained`` path. The tokenizers are the tiny one padded to CLIP's 49,408 rows,
as sd15-random's is. `PUBLISHED_PARAMETERS` holds each component's published size; the tests
build the components on the meta device and check them against it.
"""

from __future__ import annotations

import json
from pathlib import Path

from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from pretrained.sd15_random import SD15_TEXT, SD15_VOCAB_SIZE, pad_vocabulary
from pretrained.tiny_sd import ensure_built, seeded
from pretrained.tiny_sdxl import SDXL_MODEL_INDEX, SDXL_PAD_TOKEN, sdxl_scheduler
from pretrained.tiny_tokenizer import write_tiny_clip_tokenizer

SDXL_RANDOM_NAME = "sdxl-random"

# unet/config.json (the non-default fields).
SDXL_UNET = {
    "sample_size": 128,
    "block_out_channels": (320, 640, 1280),
    "layers_per_block": 2,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "attention_head_dim": (5, 10, 20),
    "transformer_layers_per_block": (1, 2, 10),
    "cross_attention_dim": 2048,
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
}
# vae/config.json: SD's autoencoder with SDXL's scale (madebyollin/sdxl-vae-fp16-fix has the
# same shapes and scale; it only keeps activations in fp16 range).
SDXL_VAE = {
    "sample_size": 1024,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "latent_channels": 4,
    "scaling_factor": 0.13025,
    "force_upcast": True,
}
# text_encoder_2/config.json: OpenCLIP ViT-bigG/14's text tower.
SDXL_TEXT_2 = {
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_hidden_layers": 32,
    "num_attention_heads": 20,
    "max_position_embeddings": 77,
    "hidden_act": "gelu",
    "projection_dim": 1280,
}
# Parameter counts of the published checkpoint's components.
PUBLISHED_PARAMETERS = {
    "unet": 2_567_463_684,
    "vae": 83_653_863,
    "text_encoder": 123_060_480,
    "text_encoder_2": 694_659_840,
}


def sdxl_builders(tokenizer: CLIPTokenizer) -> dict[str, object]:
    """Each component's constructor at the published shapes (for saving, or the meta device)."""
    ids = {
        "vocab_size": SD15_VOCAB_SIZE,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    return {
        "unet": lambda: UNet2DConditionModel(**SDXL_UNET),
        "vae": lambda: AutoencoderKL(**SDXL_VAE),
        "text_encoder": lambda: CLIPTextModel(CLIPTextConfig(**ids, **SD15_TEXT)),
        "text_encoder_2": lambda: CLIPTextModelWithProjection(CLIPTextConfig(**ids, **SDXL_TEXT_2)),
    }


def save_sdxl_random(folder: Path, seed: int = 0) -> Path:
    for name, pad in (("tokenizer", None), ("tokenizer_2", SDXL_PAD_TOKEN)):
        write_tiny_clip_tokenizer(folder / name)
        pad_vocabulary(folder / name, SD15_VOCAB_SIZE)
        extra = {} if pad is None else {"pad_token": pad}
        CLIPTokenizer.from_pretrained(folder / name, model_max_length=77, **extra).save_pretrained(
            folder / name
        )
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    for name, build in sdxl_builders(tokenizer).items():
        seeded(build, seed).save_pretrained(folder / name)  # one at a time: less memory
    sdxl_scheduler().save_pretrained(folder / "scheduler")
    (folder / "model_index.json").write_text(json.dumps(SDXL_MODEL_INDEX, indent=2))
    return folder


def ensure_sdxl_random() -> Path:
    """The sdxl-random folder, built on first use (minutes and 14 GB of disk)."""
    return ensure_built(SDXL_RANDOM_NAME, save_sdxl_random, "model_index.json")
