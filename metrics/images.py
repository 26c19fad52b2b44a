"""Image conversions and the DreamBooth-protocol preprocessing, in plain torch (no torchvision).

Generated images are scored as they are saved: quantised to 8 bits first, so that a score
recomputed from the PNG files is the same score.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> uint8, rounding as PIL does when saving."""
    return (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)


def quantize(images: torch.Tensor) -> torch.Tensor:
    """What a saved 8-bit PNG holds, back in [0, 1] floats."""
    return to_uint8(images).float() / 255


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) in [0, 1] (or uint8) -> RGB PIL images."""
    if images.dtype != torch.uint8:
        images = to_uint8(images)
    arrays = images.permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(array, mode="RGB") for array in arrays]


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> (3, H, W) float in [0, 1]."""
    array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255


def resize_shorter_side(image: torch.Tensor, size: int) -> torch.Tensor:
    """(3, H, W) -> shorter side `size`, bicubic with antialiasing; the longer side is
    truncated to an int, as torchvision's Resize(size) does."""
    height, width = image.shape[-2:]
    if height <= width:
        new = (size, int(size * width / height))
    else:
        new = (int(size * height / width), size)
    resized = F.interpolate(image[None].float(), size=new, mode="bicubic", antialias=True)
    return resized[0].clamp(0, 1)


def center_crop(image: torch.Tensor, size: int) -> torch.Tensor:
    """(C, H, W) -> (C, size, size), offsets rounded as torchvision's CenterCrop."""
    height, width = image.shape[-2:]
    top, left = int(round((height - size) / 2.0)), int(round((width - size) / 2.0))
    return image[..., top : top + size, left : left + size]


def imagenet_preprocess(
    images: torch.Tensor | list[torch.Tensor], resize: int = 256, crop: int = 224
) -> torch.Tensor:
    """Resize (shorter side, bicubic), centre crop, ImageNet normalisation: (B, 3, crop, crop).

    Takes a batch or a list of (3, H, W) images of different sizes (reference photos).
    """
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    out = []
    for image in images:
        cropped = center_crop(resize_shorter_side(image, resize), crop)
        out.append((cropped - mean.to(cropped)) / std.to(cropped))
    return torch.stack(out)
