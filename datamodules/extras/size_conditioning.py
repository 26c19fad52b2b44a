"""``original_size`` and ``crop_top_left``: SDXL's size conditioning of each training image.

SDXL's UNet reads six numbers per image (its ``time_ids``): the photo's original size, the
top-left corner of the training crop in the resized photo, and the target size. Trained with
them, as diffusers' SDXL scripts do, the model learns what a crop looks like, and sampling at
"original = target, crop (0, 0)" asks for an uncropped, centred subject. Requested by the SDXL
backbone (backbones/sdxl.py). Both are (2,) integer tensors (height, width) and (top, left).
A flipped crop's left edge is measured in the mirrored photo (where the crop sits in it).
An M-Aug composed image is its own original: its training size, no crop.
"""

from __future__ import annotations

import random
from typing import Any, ClassVar

import torch

from datamodules.extras.base import SampleExtra


class SizeConditioning(SampleExtra):
    """Adds ``original_size`` and ``crop_top_left`` from the dataset's record of the crop."""

    provides: ClassVar[frozenset[str]] = frozenset({"original_size", "crop_top_left"})

    def add(self, sample: dict[str, Any], concept_index: int, rng: random.Random) -> None:
        height, width, top, left = sample["image_geometry"]
        sample["original_size"] = torch.tensor([height, width])
        sample["crop_top_left"] = torch.tensor([top, left])
