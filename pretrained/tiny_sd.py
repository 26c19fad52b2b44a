"""Build a tiny random Stable Diffusion pipeline, save it in diffusers format, load it like SD 1.5.

No weights can be downloaded here, so the project makes its own: the same component classes as
SD 1.5 (UNet2DConditionModel with cross-attention, AutoencoderKL, CLIPTextModel, a CLIP
tokenizer, SD's noise schedule), a few thousand times smaller and seeded, saved once into a cache
folder. Configs name it ``tiny-sd`` where they would name a hub id; ``resolve_pretrained``
(pretrained/resolve.py) maps the name to the folder and everything after that is the ordinary
``from_pretrained`` path.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from core.cache import cache_root
from pretrained.tiny_tokenizer import write_tiny_clip_tokenizer

TINY_MODEL_NAME = "tiny-sd"
SD15_RANDOM_NAME = "sd15-random"  # SD 1.5's shapes, random weights (pretrained/sd15_random.py)
TINY_CLIP_NAME = "tiny-clip"  # a CLIPModel whose text tower is the tiny SD text encoder
TINY_RESOLUTION = 32  # pixels; the tiny VAE downsamples by 2, so latents are 16x16
_BUILD_VERSION = "2"  # bump when a tiny architecture changes, so caches are rebuilt

T = TypeVar("T")


def tiny_cache_dir(name: str = TINY_MODEL_NAME) -> Path:
    """Where a tiny model lives: $PERSONALIZE_CACHE or ~/.cache/personalize."""
    return cache_root() / f"{name}-v{_BUILD_VERSION}"


def seeded(build: Callable[[], T], seed: int) -> T:
    """`build()` under `seed` without touching the global RNG, so tiny weights are reproducible."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return build()


# The transformer shape of every tiny tower (text, vision, Q-Former): width 32, 2 layers.
TINY_TRANSFORMER: dict[str, int] = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
}


def tiny_vision_config(image_size: int) -> dict[str, int]:
    """A 2-layer width-32 ViT tower (patch 8): the vision side all tiny multimodal models share."""
    return {**TINY_TRANSFORMER, "image_size": image_size, "patch_size": 8}


def _tiny_unet() -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=TINY_RESOLUTION // 2,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=16,
    )


def tiny_vae(latent_channels: int = 4, **family: float | bool) -> AutoencoderKL:
    """The tiny autoencoder (downsampling by 2); ``family``: a family's own latent width and
    scale settings (FLUX's: 16 channels, a shift, no quant convs)."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(16, 32),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=latent_channels,
        norm_num_groups=16,
        sample_size=TINY_RESOLUTION,
        **family,
    )


def _tiny_text_encoder(tokenizer: CLIPTokenizer) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        **TINY_TRANSFORMER,
        max_position_embeddings=77,
        projection_dim=32,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(config)


def sd_noise_scheduler() -> DDPMScheduler:
    """SD 1.5's training noise schedule (scaled-linear betas, epsilon prediction)."""
    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        prediction_type="epsilon",
        steps_offset=1,
    )


def save_tiny_pipeline(folder: Path, seed: int = 0) -> Path:
    """Build the tiny pipeline with seeded random weights and save it in diffusers layout."""
    tokenizer_dir = folder / "tokenizer"
    write_tiny_clip_tokenizer(tokenizer_dir)
    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir, model_max_length=77)
    tokenizer.save_pretrained(tokenizer_dir)
    unet, vae, text_encoder = seeded(
        lambda: (_tiny_unet(), tiny_vae(), _tiny_text_encoder(tokenizer)), seed
    )
    unet.save_pretrained(folder / "unet")
    vae.save_pretrained(folder / "vae")
    text_encoder.save_pretrained(folder / "text_encoder")
    sd_noise_scheduler().save_pretrained(folder / "scheduler")
    (folder / "model_index.json").write_text(MODEL_INDEX_JSON)
    return folder


def save_tiny_clip(folder: Path) -> Path:
    """A tiny CLIPModel (text + vision, projections) whose text tower is tiny-sd's encoder.

    SD 1.5's text encoder is CLIP ViT-L/14's text tower, so losses that need CLIP-projected
    text features (ACCORD's PDLoss) and metrics that compare CLIP text and image features
    (CLIP-T, CLIP-I) find the same relation here: the tiny projection applies to the tiny
    encoder's states. Saved with its tokenizer and a (PIL) image processor.
    """
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel  # only to build it

    sd_folder = ensure_tiny_pipeline()
    text_encoder = CLIPTextModel.from_pretrained(sd_folder / "text_encoder")
    tokenizer = CLIPTokenizer.from_pretrained(sd_folder / "tokenizer")
    config = CLIPConfig(
        text_config=text_encoder.config.to_dict(),
        vision_config=tiny_vision_config(TINY_RESOLUTION),
        projection_dim=32,
    )
    clip = seeded(lambda: CLIPModel(config), 1)
    clip.text_model.load_state_dict(text_encoder.state_dict())
    clip.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    CLIPImageProcessor(
        size={"shortest_edge": TINY_RESOLUTION},
        crop_size={"height": TINY_RESOLUTION, "width": TINY_RESOLUTION},
    ).save_pretrained(folder)
    return folder


def ensure_built(name: str, build: Callable[[Path], Path], marker: str) -> Path:
    """Return the cached folder of a tiny model, building it first if needed.

    Several DDP ranks may call this at once: each builds into its own temporary folder and
    renames it into place; a rank that loses the race discards its copy.
    """
    target = tiny_cache_dir(name)
    if (target / marker).exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    build(staging)
    try:
        staging.rename(target)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not (target / marker).exists():
            raise
    return target


def ensure_tiny_pipeline() -> Path:
    """The tiny Stable Diffusion folder (diffusers layout), built on first use."""
    return ensure_built(TINY_MODEL_NAME, save_tiny_pipeline, "model_index.json")


def ensure_tiny_clip() -> Path:
    """The tiny CLIP folder (transformers layout), built on first use."""
    return ensure_built(TINY_CLIP_NAME, save_tiny_clip, "preprocessor_config.json")


MODEL_INDEX_JSON = """{
  "_class_name": "StableDiffusionPipeline",
  "_diffusers_version": "0.42.1",
  "feature_extractor": [null, null],
  "requires_safety_checker": false,
  "safety_checker": [null, null],
  "scheduler": ["diffusers", "DDPMScheduler"],
  "text_encoder": ["transformers", "CLIPTextModel"],
  "tokenizer": ["transformers", "CLIPTokenizer"],
  "unet": ["diffusers", "UNet2DConditionModel"],
  "vae": ["diffusers", "AutoencoderKL"]
}
"""
