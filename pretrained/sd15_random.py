"""Stable Diffusion 1.5's shapes with random weights, for measuring memory and speed offline.

SD 1.5's weights cannot be downloaded here, but its size is what decides whether a method fits a
card: the UNet (860M parameters), VAE (84M) and CLIP ViT-L/14 text encoder (123M) are built from
their published configs, seeded, and saved once as a diffusers folder (``sd15-random``, about
4.3 GB in fp32) that loads through the ordinary ``from_pretrained`` path. The tokenizer is the
tiny one, its vocabulary padded with never-produced entries to SD's 49,408 rows so the
embedding table has SD's size.
"""

from __future__ import annotations

import json
from pathlib import Path

from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
)

from pretrained.tiny_sd import (
    MODEL_INDEX_JSON,
    SD15_RANDOM_NAME,
    ensure_built,
    sd_noise_scheduler,
    seeded,
)
from pretrained.tiny_tokenizer import END_TOKEN, START_TOKEN, write_tiny_clip_tokenizer

SD15_VOCAB_SIZE = 49408

# runwayml/stable-diffusion-v1-5 unet/config.json and vae/config.json (the non-default fields).
SD15_UNET = {
    "sample_size": 64,
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
}
SD15_VAE = {
    "sample_size": 512,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "latent_channels": 4,
}
# openai/clip-vit-large-patch14's text tower.
SD15_TEXT = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "projection_dim": 768,
}


def pad_vocabulary(folder: Path, size: int) -> None:
    """Give vocab.json `size` entries: the specials last, as in CLIP, and filler entries that
    no merge produces (so tokenizing is unchanged)."""
    path = folder / "vocab.json"
    vocab: dict[str, int] = json.loads(path.read_text())
    specials = [START_TOKEN, END_TOKEN]
    ordinary = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1]) if t not in specials]
    filler = [f"<unused{i}>" for i in range(size - len(ordinary) - len(specials))]
    padded = {token: index for index, token in enumerate([*ordinary, *filler, *specials])}
    path.write_text(json.dumps(padded))


def save_sd15_random(folder: Path, seed: int = 0) -> Path:
    tokenizer_dir = folder / "tokenizer"
    write_tiny_clip_tokenizer(tokenizer_dir)
    pad_vocabulary(tokenizer_dir, SD15_VOCAB_SIZE)
    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir, model_max_length=77)
    tokenizer.save_pretrained(tokenizer_dir)
    text_config = CLIPTextConfig(
        vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **SD15_TEXT,
    )  # fmt: skip
    for name, build in (
        ("unet", lambda: UNet2DConditionModel(**SD15_UNET)),
        ("vae", lambda: AutoencoderKL(**SD15_VAE)),
        ("text_encoder", lambda: CLIPTextModel(text_config)),
    ):
        seeded(build, seed).save_pretrained(folder / name)  # one at a time: less memory
    sd_noise_scheduler().save_pretrained(folder / "scheduler")
    (folder / "model_index.json").write_text(MODEL_INDEX_JSON)
    return folder


def ensure_sd15_random() -> Path:
    """The sd15-random folder, built on first use (a minute and 4.3 GB of disk)."""
    return ensure_built(SD15_RANDOM_NAME, save_sd15_random, "model_index.json")


# IP-Adapter's SD 1.5 image encoder (h94/IP-Adapter models/image_encoder): OpenCLIP ViT-H/14.
IP_ADAPTER_VISION = {
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_hidden_layers": 32,
    "num_attention_heads": 16,
    "patch_size": 14,
    "image_size": 224,
    "projection_dim": 1024,
    "hidden_act": "gelu",
}


def save_sd15_random_helpers(folder: Path, seed: int = 1) -> Path:
    """What two methods load beside SD 1.5, at their real sizes: ``clip_text`` (CLIP ViT-L/14's
    text tower with its projection: PDLoss, SPL's option) and ``image_encoder`` (VisualEncoder)."""
    text = CLIPTextConfig(vocab_size=SD15_VOCAB_SIZE, **SD15_TEXT)
    seeded(lambda: CLIPTextModelWithProjection(text), seed).save_pretrained(folder / "clip_text")
    vision = CLIPVisionConfig(**IP_ADAPTER_VISION)
    image_encoder = seeded(lambda: CLIPVisionModelWithProjection(vision), seed)
    image_encoder.save_pretrained(folder / "image_encoder")
    return folder


def ensure_sd15_random_helpers() -> Path:
    return ensure_built(f"{SD15_RANDOM_NAME}-helpers", save_sd15_random_helpers, "image_encoder")
