"""Load Stable Diffusion's components with the ordinary ``from_pretrained`` code path."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from pretrained.hub import looks_like_path
from pretrained.resolve import resolve_pretrained
from pretrained.tiny_sd import TINY_MODEL_NAME


@dataclass
class StableDiffusionComponents:
    """The parts of a Stable Diffusion pipeline that personalization touches."""

    tokenizer: CLIPTokenizer
    text_encoder: CLIPTextModel
    vae: AutoencoderKL
    unet: UNet2DConditionModel
    noise_scheduler: DDPMScheduler


def load_components(
    name_or_path: str, revision: str | None = None, variant: str | None = None
) -> StableDiffusionComponents:
    """Load from a hub id, a local diffusers folder, or ``tiny-sd`` (built offline on demand)."""
    option = "model.init_args.pretrained_model_name_or_path"
    path = resolve_pretrained(name_or_path, option, revision)
    if path != name_or_path and Path(path).is_dir():
        revision = None  # a cached snapshot: the revision is already the folder
    if looks_like_path(path) and not Path(path).expanduser().is_dir():
        raise FileNotFoundError(
            f"model folder {path!r} does not exist; give a local folder in diffusers layout "
            "(tokenizer/, text_encoder/, vae/, unet/, scheduler/), a hub id already in the local "
            f"Hugging Face cache, or {TINY_MODEL_NAME!r} for the tiny offline pipeline."
        )
    try:
        return StableDiffusionComponents(
            tokenizer=CLIPTokenizer.from_pretrained(path, subfolder="tokenizer", revision=revision),
            text_encoder=CLIPTextModel.from_pretrained(
                path, subfolder="text_encoder", revision=revision, variant=variant
            ),
            vae=AutoencoderKL.from_pretrained(
                path, subfolder="vae", revision=revision, variant=variant
            ),
            unet=UNet2DConditionModel.from_pretrained(
                path, subfolder="unet", revision=revision, variant=variant
            ),
            noise_scheduler=DDPMScheduler.from_pretrained(path, subfolder="scheduler"),
        )
    except (OSError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise OSError(
            f"could not load a Stable Diffusion pipeline from {name_or_path!r} ({first}); give "
            "a local folder in diffusers layout (tokenizer/, text_encoder/, vae/, unet/, "
            "scheduler/), a hub id that is in the local Hugging Face cache or reachable, or "
            f"{TINY_MODEL_NAME!r} for the tiny offline test pipeline."
        ) from None  # the message names the cause; the chain would only repeat it
