"""A tiny random AnimateDiff motion adapter that fits tiny-sd's UNet, built and saved in code.

AnimateDiff's adapters (``guoyww/animatediff-motion-adapter-v1-5-2`` for SD 1.x) cannot be
downloaded here, so ``tiny-motion-adapter`` stands in for them, like ``tiny-sd`` for SD 1.5:
the same ``MotionAdapter`` class, with tiny-sd's block widths and layers per block, seeded,
saved once and loaded with ``from_pretrained``.
"""

from __future__ import annotations

from pathlib import Path

from diffusers import MotionAdapter

from pretrained.hub import resolve_folder_or_hub_id
from pretrained.tiny_sd import ensure_built, seeded

TINY_MOTION_ADAPTER_NAME = "tiny-motion-adapter"
TINY_MAX_FRAMES = 32  # positional encodings of the temporal attention: frames per clip


def save_tiny_motion_adapter(folder: Path, seed: int = 0) -> Path:
    """tiny-sd's shape: two blocks of 32 and 64 channels, one layer each, a motion mid block."""
    adapter = seeded(
        lambda: MotionAdapter(
            block_out_channels=(32, 64),
            motion_layers_per_block=1,
            motion_num_attention_heads=4,
            motion_norm_num_groups=16,
            motion_max_seq_length=TINY_MAX_FRAMES,
            use_motion_mid_block=True,
        ),
        seed,
    )
    adapter.save_pretrained(folder)
    return folder


def resolve_motion_adapter(name_or_path: str) -> str:
    """``tiny-motion-adapter`` -> its cache folder; a folder as given; a hub id when the hub
    or its cached snapshot is there, else a one-line error (pretrained/hub.py)."""
    if name_or_path == TINY_MOTION_ADAPTER_NAME:
        return str(ensure_built(TINY_MOTION_ADAPTER_NAME, save_tiny_motion_adapter, "config.json"))
    tiny = f"{TINY_MOTION_ADAPTER_NAME!r} for its tiny offline twin"
    return resolve_folder_or_hub_id(name_or_path, "--motion-adapter", tiny)
