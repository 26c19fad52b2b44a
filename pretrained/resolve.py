"""A model option's value to what ``from_pretrained`` reads: the names of the models the
project builds itself (``tiny-sd``, ``tiny-clip``, ``sd15-random``) to their cache folders, a
hub id to itself or its cached snapshot, a folder to itself."""

from __future__ import annotations

from pretrained.hub import resolve_folder_or_hub_id
from pretrained.sd15_random import ensure_sd15_random
from pretrained.tiny_sd import (
    SD15_RANDOM_NAME,
    TINY_CLIP_NAME,
    TINY_MODEL_NAME,
    ensure_tiny_clip,
    ensure_tiny_pipeline,
)


def resolve_pretrained(
    name_or_path: str,
    option: str = "the model option",
    revision: str | None = None,
    tiny_name: str = TINY_MODEL_NAME,
) -> str:
    """Map ``tiny-sd`` / ``tiny-clip`` to their cache folders, and a hub id to itself when the
    hub is reachable, else to its cached snapshot, else a one-line error (pretrained/hub.py);
    a folder is returned as given."""
    if name_or_path == TINY_MODEL_NAME:
        return str(ensure_tiny_pipeline())
    if name_or_path == TINY_CLIP_NAME:
        return str(ensure_tiny_clip())
    if name_or_path == SD15_RANDOM_NAME:
        return str(ensure_sd15_random())
    tiny = f"{tiny_name!r} for its tiny offline twin"
    return resolve_folder_or_hub_id(name_or_path, option, tiny, revision)
