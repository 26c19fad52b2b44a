"""CLIP's text projection for the Stable Diffusion text encoder (ACCORD's PDLoss, SPL's option).

SD's text encoder is the text tower of a CLIP model without its final projection; losses that
compare text features in CLIP's joint space need that projection. It is loaded here, from the
CLIP model the text tower came from, through transformers' ordinary ``from_pretrained``:
``openai/clip-vit-large-patch14`` for SD 1.x, ``tiny-clip`` (whose text tower is tiny-sd's
encoder) for the tiny pipeline. Only the projection matrix is kept; it is frozen.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn
from transformers import AutoConfig, CLIPConfig, CLIPTextModelWithProjection
from transformers.utils import logging as hf_logging

from pretrained.resolve import resolve_pretrained
from pretrained.tiny_flux import TINY_FLUX_NAME, TINY_FLUX_SCHNELL_NAME
from pretrained.tiny_sd import TINY_CLIP_NAME, TINY_MODEL_NAME
from pretrained.tiny_sdxl import TINY_SDXL_NAME

SD1_CLIP = "openai/clip-vit-large-patch14"  # SD 1.x's text encoder is this model's text tower


def default_clip_for(pretrained_model_name_or_path: str) -> str:
    """The CLIP model whose text tower the given model's (first) text encoder is: CLIP
    ViT-L/14 for SD 1.x, SDXL and FLUX.1, tiny-clip for the tiny pipelines."""
    tiny = pretrained_model_name_or_path in (
        TINY_MODEL_NAME, TINY_SDXL_NAME, TINY_FLUX_NAME, TINY_FLUX_SCHNELL_NAME
    )  # fmt: skip
    return TINY_CLIP_NAME if tiny else SD1_CLIP


def load_text_projection(clip_model: str, hidden_size: int) -> nn.Linear:
    """The frozen ``text_projection`` of a CLIP model (hub id, folder, or ``tiny-clip``).

    Raises a ValueError naming both sizes when the CLIP's text width differs from the
    diffusion model's text encoder (``hidden_size``): the projection would not apply.
    """
    path = resolve_pretrained(clip_model, "the loss's clip_model", tiny_name=TINY_CLIP_NAME)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the vision weights it skips are expected, not news
    try:
        config = AutoConfig.from_pretrained(path)
        if isinstance(config, CLIPConfig):
            # A full CLIP checkpoint: its projection width is the top-level projection_dim.
            config.text_config.projection_dim = config.projection_dim
            config = config.text_config
        clip = CLIPTextModelWithProjection.from_pretrained(path, config=config)
    except (OSError, ValueError, RuntimeError) as error:
        raise OSError(
            f"Could not load the CLIP text projection from {clip_model!r}: {error}\n"
            f"Give the CLIP model whose text tower your Stable Diffusion uses ({SD1_CLIP} "
            f"for SD 1.x, already in the local Hugging Face cache or a local folder), or "
            f"{TINY_CLIP_NAME!r} with the tiny pipeline."
        ) from error
    finally:
        hf_logging.set_verbosity(verbosity)
    projection = clip.text_projection
    if projection.in_features != hidden_size:
        raise ValueError(
            f"CLIP model {clip_model!r} projects {projection.in_features}-wide text features, "
            f"but the text encoder is {hidden_size} wide; set clip_model to the CLIP whose "
            f"text tower the diffusion model uses ({TINY_CLIP_NAME!r} for tiny-sd, {SD1_CLIP} "
            "for SD 1.x)."
        )
    projection.requires_grad_(False)
    return projection.eval().float()


TextFeature = Literal["auto", "pooled", "clip"]
TEXT_FEATURES = ("auto", "pooled", "clip")


def check_text_feature(value: str) -> TextFeature:
    if value not in TEXT_FEATURES:
        raise ValueError(f"text_feature must be one of {TEXT_FEATURES}, got {value!r}.")
    return value  # type: ignore[return-value]


def chosen_text_feature(module: Any, value: TextFeature, loss: str) -> str:
    """``pooled`` or ``clip`` for this module (``auto``: the family's pooled text where it has
    one, SDXL; else CLIP's projection); ``pooled`` on a family without one is a ValueError."""
    family = getattr(getattr(module, "family", None), "name", "sd1")
    has_pooled = family == "sdxl"  # FLUX's pooled text is CLIP ViT-L's, unprojected: clip
    if value == "pooled" and not has_pooled:
        raise ValueError(
            f"{loss} text_feature: pooled reads the family's pooled text embedding, which the "
            f"{family} backbone does not have; use clip (or auto)."
        )
    return "pooled" if value == "pooled" or (value == "auto" and has_pooled) else "clip"


def check_pooled_text_options(loss: str, clip_model: str | None, pool: str = "eos") -> None:
    """SDXL's pooled text is the second encoder's own projected end-of-text feature: no other
    CLIP's projection applies to it, and it exists at the end-of-text only."""
    if clip_model is not None:
        raise ValueError(
            f"{loss} on SDXL's pooled text compares the second text encoder's own projected "
            "feature, which no clip_model's projection applies to: leave clip_model unset, or "
            "set text_feature: clip (CLIP ViT-L's projection of the first encoder)."
        )
    if pool != "eos":
        raise ValueError(
            f"{loss} on SDXL with project: true reads the pooled (end-of-text) feature; set "
            "pool: eos, or project: false to compare the states at the concept token."
        )


def project(projection: nn.Linear, features: torch.Tensor) -> torch.Tensor:
    """Apply the projection in fp32, also inside a bf16 autocast region: cosines of nearly
    equal features are what the losses compare, and bf16 would round them away."""
    with torch.autocast(features.device.type, enabled=False):
        return projection(features.float())
