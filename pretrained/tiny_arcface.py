"""``tiny-arcface``: a tiny random ArcFace-shaped network, built in code for offline tests.

ArcFace's weights cannot be downloaded here, so Face-Sim's tests use our `IResNet` (the real
class, 112 x 112 input, four stride-2 stages, BN-FC-BN head) with one block per stage, widths
8..32 and a 32-dimensional embedding, seeded, saved once into the tiny cache and loaded through
the same ``IResNet.from_pretrained`` as arcface_torch weights. Random weights still map similar
crops to similar embeddings, which is what the tests' same-face vs other-face check reads.
"""

from __future__ import annotations

from pathlib import Path

from pretrained.iresnet import IResNet
from pretrained.tiny_sd import ensure_built, seeded

TINY_ARCFACE_NAME = "tiny-arcface"


def save_tiny_arcface(folder: Path) -> Path:
    """IResNet with depths (1, 1, 1, 1), widths (8, 16, 32, 32), 32-d embedding; BN in eval
    mode has unit statistics, so the network is a plain seeded conv net."""
    seeded(lambda: IResNet((1, 1, 1, 1), (8, 16, 32, 32), 32), 9).save_pretrained(folder)
    return folder


def ensure_tiny_arcface() -> Path:
    """The tiny ArcFace folder (config.json + model.safetensors), built on first use."""
    return ensure_built(TINY_ARCFACE_NAME, save_tiny_arcface, "config.json")
