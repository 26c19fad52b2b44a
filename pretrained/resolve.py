"""A model option's value to what ``from_pretrained`` reads: the names of the models the
project builds itself (``tiny-sd``, ``tiny-sdxl``, ``tiny-flux``, ``tiny-flux-schnell``,
``tiny-clip``, ``sd15-random``, ``sdxl-random``, ``flux-random``) to their cache folders, a hub
id to itself or its cached snapshot, a folder to itself."""

from __future__ import annotations

from pretrained.flux_random import FLUX_RANDOM_NAME, ensure_flux_random
from pretrained.hub import resolve_folder_or_hub_id
from pretrained.sd15_random import ensure_sd15_random
from pretrained.sdxl_random import SDXL_RANDOM_NAME, ensure_sdxl_random
from pretrained.tiny_flux import (
    TINY_FLUX_NAME,
    TINY_FLUX_SCHNELL_NAME,
    ensure_tiny_flux,
    ensure_tiny_flux_schnell,
)
from pretrained.tiny_sd import (
    SD15_RANDOM_NAME,
    TINY_CLIP_NAME,
    TINY_MODEL_NAME,
    ensure_tiny_clip,
    ensure_tiny_pipeline,
)
from pretrained.tiny_sdxl import TINY_SDXL_NAME, ensure_tiny_sdxl

BUILT_IN = {
    TINY_MODEL_NAME: ensure_tiny_pipeline,
    TINY_SDXL_NAME: ensure_tiny_sdxl,
    TINY_FLUX_NAME: ensure_tiny_flux,
    TINY_FLUX_SCHNELL_NAME: ensure_tiny_flux_schnell,
    TINY_CLIP_NAME: ensure_tiny_clip,
    SD15_RANDOM_NAME: ensure_sd15_random,
    SDXL_RANDOM_NAME: ensure_sdxl_random,
    FLUX_RANDOM_NAME: ensure_flux_random,
}


def resolve_pretrained(
    name_or_path: str,
    option: str = "the model option",
    revision: str | None = None,
    tiny_name: str = TINY_MODEL_NAME,
) -> str:
    """Map the built-in names to their cache folders, and a hub id to itself when the
    hub is reachable, else to its cached snapshot, else a one-line error (pretrained/hub.py);
    a folder is returned as given."""
    if name_or_path in BUILT_IN:
        return str(BUILT_IN[name_or_path]())
    tiny = f"{tiny_name!r} for its tiny offline twin"
    return resolve_folder_or_hub_id(name_or_path, option, tiny, revision)
