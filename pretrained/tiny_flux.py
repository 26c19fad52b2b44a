"""Tiny random FLUX.1 pipelines, built in code and saved in diffusers layout (``tiny-flux``,
``tiny-flux-schnell``).

The same component classes and folders as black-forest-labs/FLUX.1-dev and FLUX.1-schnell: a
CLIP text encoder whose pooled output conditions the transformer's modulation, a T5 v1.1 encoder
(gated-GELU, relative positions, its embedding rows rounded up to a multiple of 128 past the
tokenizer's size as real T5's 32,128 rows for 32,100 tokens), an MM-DiT with 2x2-packed 16-channel
latents and 3-axis rotary embeddings, FLUX's 16-channel VAE with its shift and scale and without
quant convs, and the flow-matching schedules of the two releases. dev is guidance-distilled (the
transformer embeds the guidance scale); schnell is not, and samples with an unshifted schedule.
Widths of 32, so a step runs on a CPU in a blink.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, T5Config, T5EncoderModel

from pretrained.sd15_random import pad_vocabulary
from pretrained.tiny_sd import TINY_TRANSFORMER, ensure_built, seeded, tiny_vae
from pretrained.tiny_t5_tokenizer import write_tiny_t5_tokenizer
from pretrained.tiny_tokenizer import write_tiny_clip_tokenizer

TINY_FLUX_NAME = "tiny-flux"  # guidance-distilled, as FLUX.1-dev
TINY_FLUX_SCHNELL_NAME = "tiny-flux-schnell"  # no guidance embedding, as FLUX.1-schnell
T5_ROW_MULTIPLE = 128  # T5's embedding has 32,128 rows for its 32,100 tokens

# vae/config.json of FLUX.1-dev and schnell (the fields that differ from SD's autoencoder).
FLUX_VAE_FAMILY: dict[str, float | bool] = {
    "scaling_factor": 0.3611,
    "shift_factor": 0.1159,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
    "force_upcast": True,
}
FLUX_LATENT_CHANNELS = 16
TINY_T5: dict[str, int | str] = {
    "d_model": 32,
    "d_ff": 64,
    "num_layers": 2,
    "num_heads": 2,
    "d_kv": 16,
    "feed_forward_proj": "gated-gelu",
}


def embedding_rows(tokens: int) -> int:
    """T5's embedding size for a tokenizer of `tokens` entries: the next multiple of 128."""
    return math.ceil(tokens / T5_ROW_MULTIPLE) * T5_ROW_MULTIPLE


def t5_encoder_config(vocab_size: int, **shape: int | str) -> T5Config:
    """A T5 v1.1 encoder config (untied head, T5's special ids) of the given shape."""
    return T5Config(
        vocab_size=vocab_size,
        tie_word_embeddings=False,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
        **shape,
    )


def flux_scheduler(guidance: bool = True) -> FlowMatchEulerDiscreteScheduler:
    """scheduler/ of FLUX.1-dev (``guidance``: shift by image size) or of FLUX.1-schnell."""
    return FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000,
        shift=3.0 if guidance else 1.0,
        use_dynamic_shifting=guidance,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )


def _tiny_transformer(guidance: bool, text_dim: int, pooled_dim: int) -> FluxTransformer2DModel:
    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=4 * FLUX_LATENT_CHANNELS,  # 2x2 latent patches packed into tokens
        num_layers=1,
        num_single_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=text_dim,
        pooled_projection_dim=pooled_dim,
        guidance_embeds=guidance,
        axes_dims_rope=(4, 6, 6),  # sums to the head width, as (16, 56, 56) sums to 128
    )


def write_flux_tokenizers(
    folder: Path, clip_size: int | None = None, t5_size: int | None = None
) -> tuple[CLIPTokenizer, int]:
    """tokenizer/ (CLIP, 77 tokens) and tokenizer_2/ (T5), padded to the given sizes (the
    published ones, for flux-random); return the CLIP tokenizer and T5's size."""
    write_tiny_clip_tokenizer(folder / "tokenizer")
    if clip_size is not None:
        pad_vocabulary(folder / "tokenizer", clip_size)
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer", model_max_length=77)
    tokenizer.save_pretrained(folder / "tokenizer")
    return tokenizer, write_tiny_t5_tokenizer(folder / "tokenizer_2", size=t5_size)


def save_tiny_flux(folder: Path, seed: int = 0, guidance: bool = True) -> Path:
    """Build tiny FLUX.1 (dev-like, or schnell-like without ``guidance``) and save it."""
    tokenizer, t5_tokens = write_flux_tokenizers(folder)
    clip_config = CLIPTextConfig(
        vocab_size=len(tokenizer), max_position_embeddings=77, projection_dim=32,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, **TINY_TRANSFORMER,
    )  # fmt: skip
    clip = seeded(lambda: CLIPTextModel(clip_config), seed)
    t5_config = t5_encoder_config(embedding_rows(t5_tokens), **TINY_T5)
    t5 = seeded(lambda: T5EncoderModel(t5_config), seed + 1)
    transformer = seeded(
        lambda: _tiny_transformer(guidance, t5_config.d_model, clip_config.hidden_size), seed + 2
    )
    vae = seeded(lambda: tiny_vae(FLUX_LATENT_CHANNELS, **FLUX_VAE_FAMILY), seed + 3)
    clip.save_pretrained(folder / "text_encoder")
    t5.save_pretrained(folder / "text_encoder_2")
    transformer.save_pretrained(folder / "transformer")
    vae.save_pretrained(folder / "vae")
    flux_scheduler(guidance).save_pretrained(folder / "scheduler")
    (folder / "model_index.json").write_text(json.dumps(FLUX_MODEL_INDEX, indent=2))
    return folder


def ensure_tiny_flux() -> Path:
    """The tiny FLUX.1-dev-like folder (diffusers layout), built on first use."""
    return ensure_built(TINY_FLUX_NAME, save_tiny_flux, "model_index.json")


def ensure_tiny_flux_schnell() -> Path:
    """The tiny FLUX.1-schnell-like folder (no guidance embedding), built on first use."""
    return ensure_built(
        TINY_FLUX_SCHNELL_NAME,
        lambda folder: save_tiny_flux(folder, guidance=False),
        "model_index.json",
    )


FLUX_MODEL_INDEX = {
    "_class_name": "FluxPipeline",
    "_diffusers_version": "0.42.1",
    "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "text_encoder_2": ["transformers", "T5EncoderModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "tokenizer_2": ["transformers", "T5TokenizerFast"],
    "transformer": ["diffusers", "FluxTransformer2DModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}
