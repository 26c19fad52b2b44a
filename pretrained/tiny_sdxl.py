"""A tiny random SDXL pipeline, built in code and saved in diffusers layout (``tiny-sdxl``).

The same component classes and wiring as stabilityai/stable-diffusion-xl-base-1.0: two CLIP text
encoders (the second with its projection, whose output is SDXL's pooled text embedding), a
second tokenizer that pads with "!" as SDXL's does, a UNet with the ``text_time`` addition
embedding (pooled text + six size/crop numbers), cross-attention over both encoders' states
concatenated, and SDXL's noise schedule; widths of 32 so a step runs on a CPU in a blink.
"""

from __future__ import annotations

import json
from pathlib import Path

from diffusers import EulerDiscreteScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from pretrained.tiny_sd import (
    TINY_RESOLUTION,
    TINY_TRANSFORMER,
    ensure_built,
    seeded,
    tiny_vae,
)
from pretrained.tiny_tokenizer import write_tiny_clip_tokenizer

TINY_SDXL_NAME = "tiny-sdxl"
SDXL_PAD_TOKEN = "!"  # tokenizer_2 of SDXL pads with "!" (id 0), not with end-of-text
TINY_TIME_EMBED_DIM = 8  # per size/crop number; SDXL's is 256


def sdxl_scheduler() -> EulerDiscreteScheduler:
    """SDXL base's scheduler/ config (its training schedule is SD's scaled-linear DDPM)."""
    return EulerDiscreteScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        steps_offset=1,
        timestep_spacing="leading",
        interpolation_type="linear",
        use_karras_sigmas=False,
    )


def _tiny_sdxl_unet(pooled_dim: int, cross_dim: int) -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=TINY_RESOLUTION // 2,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        transformer_layers_per_block=(1, 2),
        use_linear_projection=True,
        cross_attention_dim=cross_dim,
        addition_embed_type="text_time",
        addition_time_embed_dim=TINY_TIME_EMBED_DIM,
        projection_class_embeddings_input_dim=6 * TINY_TIME_EMBED_DIM + pooled_dim,
        norm_num_groups=16,
    )


def _text_config(tokenizer: CLIPTokenizer, **extra: int | str) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **{**TINY_TRANSFORMER, **extra},
    )


def save_tiny_sdxl(folder: Path, seed: int = 0) -> Path:
    """Build tiny SDXL with seeded random weights and save it in diffusers layout."""
    for name, pad in (("tokenizer", None), ("tokenizer_2", SDXL_PAD_TOKEN)):
        write_tiny_clip_tokenizer(folder / name)
        extra = {} if pad is None else {"pad_token": pad}
        CLIPTokenizer.from_pretrained(folder / name, model_max_length=77, **extra).save_pretrained(
            folder / name
        )
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    tokenizer_2 = CLIPTokenizer.from_pretrained(folder / "tokenizer_2")
    first = seeded(lambda: CLIPTextModel(_text_config(tokenizer)), seed)
    # The second encoder is wider than the first, as SDXL's are (768, 1280): the clients and
    # diffusers' single-file loader tell the two towers apart by their widths.
    second = seeded(
        lambda: CLIPTextModelWithProjection(
            _text_config(tokenizer_2, hidden_size=48, projection_dim=32, hidden_act="gelu")
        ),
        seed + 1,
    )
    pooled, cross = (
        second.config.projection_dim,
        first.config.hidden_size + second.config.hidden_size,
    )
    unet = seeded(lambda: _tiny_sdxl_unet(pooled, cross), seed + 2)
    vae = seeded(lambda: tiny_vae(scaling_factor=0.13025, force_upcast=True), seed + 3)  # SDXL's
    first.save_pretrained(folder / "text_encoder")
    second.save_pretrained(folder / "text_encoder_2")
    unet.save_pretrained(folder / "unet")
    vae.save_pretrained(folder / "vae")
    sdxl_scheduler().save_pretrained(folder / "scheduler")
    (folder / "model_index.json").write_text(json.dumps(SDXL_MODEL_INDEX, indent=2))
    return folder


def ensure_tiny_sdxl() -> Path:
    """The tiny SDXL folder (diffusers layout), built on first use."""
    return ensure_built(TINY_SDXL_NAME, save_tiny_sdxl, "model_index.json")


SDXL_MODEL_INDEX = {
    "_class_name": "StableDiffusionXLPipeline",
    "_diffusers_version": "0.42.1",
    "force_zeros_for_empty_prompt": True,
    "scheduler": ["diffusers", "EulerDiscreteScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "tokenizer_2": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}
