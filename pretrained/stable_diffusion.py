"""Load a diffusion pipeline's components with the ordinary ``from_pretrained`` code path.

`load_parts` loads any family's subfolders (the backbones/ families say which); `load_components`
is Stable Diffusion 1.x's set.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from pretrained.hub import looks_like_path
from pretrained.resolve import resolve_pretrained
from pretrained.tiny_sd import TINY_MODEL_NAME

SD1_PARTS: dict[str, Any] = {
    "tokenizer": CLIPTokenizer,
    "text_encoder": CLIPTextModel,
    "vae": AutoencoderKL,
    "unet": UNet2DConditionModel,
    "scheduler": DDPMScheduler,
}
WITHOUT_VARIANT = ("tokenizer", "tokenizer_2", "scheduler")  # files with no fp16 variant


@dataclass
class StableDiffusionComponents:
    """The parts of a Stable Diffusion pipeline that personalization touches."""

    tokenizer: CLIPTokenizer
    text_encoder: CLIPTextModel
    vae: AutoencoderKL
    unet: UNet2DConditionModel
    noise_scheduler: DDPMScheduler


def load_parts(
    name_or_path: str,
    parts: dict[str, Any],
    revision: str | None = None,
    variant: str | None = None,
    pipeline_name: str = "Stable Diffusion",
    tiny_name: str = TINY_MODEL_NAME,
) -> dict[str, Any]:
    """Each subfolder of ``parts`` loaded with its class's ``from_pretrained``, from a hub id,
    a local diffusers folder, or a built-in name (``tiny-sd``, ...: built offline on demand).
    Errors are one line naming the layout the folder needs."""
    option = "model.init_args.pretrained_model_name_or_path"
    path = resolve_pretrained(name_or_path, option, revision, tiny_name=tiny_name)
    if path != name_or_path and Path(path).is_dir():
        revision = None  # a cached snapshot: the revision is already the folder
    layout = ", ".join(f"{name}/" for name in parts)
    if looks_like_path(path) and not Path(path).expanduser().is_dir():
        raise FileNotFoundError(
            f"model folder {path!r} does not exist; give a local folder in diffusers layout "
            f"({layout}), a hub id already in the local Hugging Face cache, or {tiny_name!r} for "
            "the tiny offline pipeline."
        )
    loaded: dict[str, Any] = {}
    try:
        for name, cls in parts.items():
            options: dict[str, Any] = {"subfolder": name}
            if name != "scheduler":
                options["revision"] = revision
            if name not in WITHOUT_VARIANT:
                options["variant"] = variant
            loaded[name] = cls.from_pretrained(path, **options)
    except (OSError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise OSError(
            f"could not load a {pipeline_name} pipeline from {name_or_path!r} ({first}); give "
            f"a local folder in diffusers layout ({layout}), a hub id that is in the local "
            f"Hugging Face cache or reachable, or {tiny_name!r} for the tiny offline test "
            "pipeline."
        ) from None  # the message names the cause; the chain would only repeat it
    return loaded


def load_vae(name_or_path: str, latent_channels: int, revision: str | None = None) -> AutoencoderKL:
    """A VAE of its own in place of the pipeline's (SDXL's fp16-fix: madebyollin/sdxl-vae-fp16-fix):
    a hub id or folder holding an AutoencoderKL, or a pipeline folder with a ``vae/``; its
    latents must have the denoiser's ``latent_channels``."""
    option = "model.init_args.vae_name_or_path"
    path = resolve_pretrained(name_or_path, option, revision)
    subfolder = "vae" if (Path(path) / "vae" / "config.json").is_file() else None
    try:
        vae = AutoencoderKL.from_pretrained(path, subfolder=subfolder, revision=revision)
    except (OSError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise OSError(
            f"could not load a VAE from {option} {name_or_path!r} ({first}); give a hub id or "
            "folder holding an AutoencoderKL (config.json and weights), e.g. "
            "madebyollin/sdxl-vae-fp16-fix in the local Hugging Face cache."
        ) from None
    if vae.config.latent_channels != latent_channels:
        raise ValueError(
            f"{option} {name_or_path!r} makes {vae.config.latent_channels}-channel latents; the "
            f"denoiser reads {latent_channels}: give a VAE of the model's family."
        )
    return vae


def load_components(
    name_or_path: str, revision: str | None = None, variant: str | None = None
) -> StableDiffusionComponents:
    """Load SD 1.x from a hub id, a local diffusers folder, or ``tiny-sd``."""
    parts = load_parts(name_or_path, SD1_PARTS, revision, variant)
    return StableDiffusionComponents(
        tokenizer=parts["tokenizer"],
        text_encoder=parts["text_encoder"],
        vae=parts["vae"],
        unet=parts["unet"],
        noise_scheduler=parts["scheduler"],
    )
