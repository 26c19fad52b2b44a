"""FLUX.1-dev's shapes with random weights (``flux-random``), for memory and speed offline.

Built from the published configs of black-forest-labs/FLUX.1-dev (transformer/: 19 double-stream
and 38 single-stream blocks of 24 heads x 128; text_encoder_2/: T5 v1.1 XXL's encoder;
text_encoder/: CLIP ViT-L/14's text tower; vae/: the 16-channel autoencoder), seeded and saved
as a diffusers folder (about 67 GB in fp32) that loads through the ordinary ``from_pretrained``
path. The tokenizers are the tiny ones padded to the published sizes (CLIP's 49,408; T5's
32,100, below its encoder's 32,128 rows as in the release). ``double_blocks``, ``single_blocks``
and ``t5_layers`` build a shallower copy whose size a CPU can hold: every block of a kind has
the same size, so the full model's is the reduced one's plus the missing blocks'.
`PUBLISHED_PARAMETERS` holds each component's published size; the tests build the components
on the meta device and check them against it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from diffusers import AutoencoderKL, FluxTransformer2DModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, T5EncoderModel

from pretrained.sd15_random import SD15_TEXT, SD15_VOCAB_SIZE
from pretrained.tiny_flux import (
    FLUX_LATENT_CHANNELS,
    FLUX_MODEL_INDEX,
    FLUX_VAE_FAMILY,
    flux_scheduler,
    t5_encoder_config,
    write_flux_tokenizers,
)
from pretrained.tiny_sd import ensure_built, seeded

FLUX_RANDOM_NAME = "flux-random"
T5_TOKENIZER_SIZE = 32100  # 32,000 SentencePiece pieces and 100 sentinels
T5_VOCAB_SIZE = 32128  # text_encoder_2's embedding rows

# transformer/config.json (patch_size 1 and in_channels 64 are the defaults).
FLUX_TRANSFORMER = {
    "num_layers": 19,  # double-stream (MM-DiT) blocks
    "num_single_layers": 38,
    "attention_head_dim": 128,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,
    "pooled_projection_dim": 768,
    "guidance_embeds": True,
    "axes_dims_rope": (16, 56, 56),
}
# text_encoder_2/config.json: google/t5-v1_1-xxl's encoder.
T5_XXL = {
    "d_model": 4096,
    "d_ff": 10240,
    "num_layers": 24,
    "num_heads": 64,
    "d_kv": 64,
    "feed_forward_proj": "gated-gelu",
}
# vae/config.json: SD's autoencoder widths with 16 latent channels, FLUX's scale and shift.
FLUX_VAE = {
    "sample_size": 1024,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "latent_channels": FLUX_LATENT_CHANNELS,
    **FLUX_VAE_FAMILY,
}
# Parameter counts of the published checkpoint's components (T5's shared embedding counted
# once: its safetensors file stores it twice, as shared.weight and encoder.embed_tokens.weight).
PUBLISHED_PARAMETERS = {
    "transformer": 11_901_408_320,
    "text_encoder_2": 4_762_310_656,
    "text_encoder": 123_060_480,
    "vae": 83_819_683,
}


def flux_builders(
    tokenizer: CLIPTokenizer,
    double_blocks: int = 19,
    single_blocks: int = 38,
    t5_layers: int = 24,
) -> dict[str, Callable[[], torch.nn.Module]]:
    """Each component's constructor at the published shapes (for saving, or the meta device),
    the transformer and T5 at the given depths."""
    clip = CLIPTextConfig(
        vocab_size=SD15_VOCAB_SIZE, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **SD15_TEXT,
    )  # fmt: skip
    depth = {"num_layers": double_blocks, "num_single_layers": single_blocks}
    t5 = t5_encoder_config(T5_VOCAB_SIZE, **{**T5_XXL, "num_layers": t5_layers})
    return {
        "transformer": lambda: FluxTransformer2DModel(**{**FLUX_TRANSFORMER, **depth}),
        "text_encoder_2": lambda: T5EncoderModel(t5),
        "text_encoder": lambda: CLIPTextModel(clip),
        "vae": lambda: AutoencoderKL(**FLUX_VAE),
    }


def meta_parameters(build: Callable[[], torch.nn.Module]) -> int:
    """The parameter count of `build()`'s module, built on the meta device (no memory)."""
    with torch.device("meta"):
        return sum(p.numel() for p in build().parameters())


def save_flux_random(
    folder: Path,
    seed: int = 0,
    double_blocks: int = 19,
    single_blocks: int = 38,
    t5_layers: int = 24,
) -> Path:
    """Build flux-random (or a shallower copy) with seeded weights and save it."""
    tokenizer, _ = write_flux_tokenizers(folder, SD15_VOCAB_SIZE, T5_TOKENIZER_SIZE)
    builders = flux_builders(tokenizer, double_blocks, single_blocks, t5_layers)
    for name, build in builders.items():
        seeded(build, seed).save_pretrained(folder / name)  # one at a time: less memory
    flux_scheduler().save_pretrained(folder / "scheduler")
    (folder / "model_index.json").write_text(json.dumps(FLUX_MODEL_INDEX, indent=2))
    return folder


def ensure_flux_random() -> Path:
    """The flux-random folder, built on first use (many minutes and 67 GB of disk)."""
    return ensure_built(FLUX_RANDOM_NAME, save_flux_random, "model_index.json")
