"""Tiny random AnimateDiff motion adapters that fit tiny-sd's and tiny-sdxl's UNets, built and
saved in code.

AnimateDiff's adapters (``guoyww/animatediff-motion-adapter-v1-5-2`` for SD 1.x,
``guoyww/animatediff-motion-adapter-sdxl-beta`` for SDXL) cannot be downloaded here, so
``tiny-motion-adapter`` and ``tiny-motion-adapter-sdxl`` stand in for them, like ``tiny-sd``
for SD 1.5: the same ``MotionAdapter`` class, with the tiny UNets' block widths and layers per
block, seeded, saved once and loaded with ``from_pretrained``. The SDXL one has no motion mid
block, as the SDXL beta adapter.
"""

from __future__ import annotations

from pathlib import Path

from diffusers import MotionAdapter

from pretrained.hub import resolve_folder_or_hub_id
from pretrained.tiny_sd import ensure_built, seeded

TINY_MOTION_ADAPTER_NAME = "tiny-motion-adapter"
TINY_SDXL_MOTION_ADAPTER_NAME = "tiny-motion-adapter-sdxl"
TINY_MAX_FRAMES = 32  # positional encodings of the temporal attention: frames per clip


def _save_adapter(folder: Path, seed: int, mid_block: bool) -> Path:
    """Two blocks of 32 and 64 channels, one layer each (both tiny UNets' shape)."""
    adapter = seeded(
        lambda: MotionAdapter(
            block_out_channels=(32, 64),
            motion_layers_per_block=1,
            motion_num_attention_heads=4,
            motion_norm_num_groups=16,
            motion_max_seq_length=TINY_MAX_FRAMES,
            use_motion_mid_block=mid_block,
        ),
        seed,
    )
    adapter.save_pretrained(folder)
    return folder


def save_tiny_motion_adapter(folder: Path, seed: int = 0) -> Path:
    """tiny-sd's adapter, with a motion mid block as SD 1.5's v1-5-2."""
    return _save_adapter(folder, seed, mid_block=True)


def save_tiny_sdxl_motion_adapter(folder: Path, seed: int = 0) -> Path:
    """tiny-sdxl's adapter, without a motion mid block as the SDXL beta."""
    return _save_adapter(folder, seed, mid_block=False)


def resolve_motion_adapter(name_or_path: str) -> str:
    """``tiny-motion-adapter(-sdxl)`` -> its cache folder; a folder as given; a hub id when the hub
    or its cached snapshot is there, else a one-line error (pretrained/hub.py)."""
    builders = {
        TINY_MOTION_ADAPTER_NAME: save_tiny_motion_adapter,
        TINY_SDXL_MOTION_ADAPTER_NAME: save_tiny_sdxl_motion_adapter,
    }
    if name_or_path in builders:
        return str(ensure_built(name_or_path, builders[name_or_path], "config.json"))
    tiny = (
        f"{TINY_MOTION_ADAPTER_NAME!r} or {TINY_SDXL_MOTION_ADAPTER_NAME!r} for tiny offline twins"
    )
    return resolve_folder_or_hub_id(name_or_path, "--motion-adapter", tiny)
