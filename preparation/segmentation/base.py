"""What every segmentation backend returns, and the check of a user's own mask file.

A segmenter's output is not checked here: a mask it missed leaves its photo out with a
warning (preparation/augmentation/sources.py), as the user can do nothing about that mask.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
from PIL import Image

# A mask under this share of the image is "empty", over it "everything": both unusable.
MIN_FOREGROUND, MAX_FOREGROUND = 0.002, 0.98


class Segmenter(Protocol):
    """image (+ the class word, for backends that find objects by name) -> foreground."""

    def foreground(self, image: Image.Image, class_word: str) -> np.ndarray: ...


def check_foreground(mask: np.ndarray, where: str) -> np.ndarray:
    """A user's mask (file `where`) as (H, W) bool, or a ValueError naming it when it is empty
    or all foreground (a paste of nothing, or of the whole photo, is no augmentation): the
    user drew it and can redraw it, so the fix is said in the message."""
    mask = np.asarray(mask).astype(bool)
    share = float(mask.mean()) if mask.size else 0.0
    if share < MIN_FOREGROUND:
        raise ValueError(f"the mask of {where} is empty; draw the concept in it (white).")
    if share > MAX_FOREGROUND:
        raise ValueError(
            f"the mask of {where} is all foreground; the background must be black (0)."
        )
    return mask


def iou(first: np.ndarray, second: np.ndarray) -> float:
    """Intersection over union of two bool masks (1.0 when both are empty)."""
    union = np.logical_or(first, second).sum()
    return float(np.logical_and(first, second).sum() / union) if union else 1.0
