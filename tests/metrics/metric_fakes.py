"""Fixed-feature stand-ins for the evaluation models, so each formula is checked exactly."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch
from torch import nn


def stack_features(images: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
    """An encoder whose 'images' already are feature vectors."""
    return torch.stack([torch.as_tensor(x).flatten().double() for x in images])


def id_images(ids: list[int]) -> torch.Tensor:
    """(B, 3, 1, 1) images in [0, 1] whose first channel carries an id (id / 255)."""
    images = torch.zeros(len(ids), 3, 1, 1)
    images[:, 0, 0, 0] = torch.tensor(ids, dtype=torch.float) / 255
    return images


class FakeClipProcessor:
    """Images -> their ids; prompts 'p<k>' -> k."""

    def __call__(
        self, text: Any = None, images: Any = None, **kwargs: Any
    ) -> dict[str, torch.Tensor]:
        if images is not None:
            return {"pixel_values": torch.stack([image[0, 0, 0].long() for image in images])}
        ids = torch.tensor([[int(t[1:])] for t in text])
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


class FakeClipModel(nn.Module):
    """Looks features up by id: image k -> image_table[k], prompt k -> text_table[k]."""

    def __init__(self, image_table: torch.Tensor, text_table: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("image_table", image_table)
        self.register_buffer("text_table", text_table)
        self.config = SimpleNamespace()

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.image_table[pixel_values.to(self.image_table.device)]

    def get_text_features(
        self, input_ids: torch.Tensor, attention_mask: Any = None
    ) -> torch.Tensor:
        return self.text_table[input_ids[:, 0].to(self.text_table.device)]


class FakeBlipEncoder(nn.Module):
    """(images, prompts) -> (image query features (B, Q, D), text features (B, D)) by id."""

    def __init__(self, image_table: torch.Tensor, text_table: torch.Tensor) -> None:
        super().__init__()
        self.image_table, self.text_table = image_table, text_table

    def forward(
        self, images: torch.Tensor, prompts: list[str]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        ids = (images[:, 0, 0, 0] * 255).round().long()
        return self.image_table[ids], self.text_table[torch.tensor([int(p[1:]) for p in prompts])]


class FakeVggEncoder(nn.Module):
    """Image k -> its fixed list of feature maps (one (C_l, H_l, W_l) tensor per layer)."""

    def __init__(self, maps: list[list[torch.Tensor]]) -> None:
        super().__init__()
        self.maps = maps

    def forward(self, images: torch.Tensor | list[torch.Tensor]) -> list[torch.Tensor]:
        ids = [int(round(float(image[0, 0, 0]) * 255)) for image in images]
        return [
            torch.stack([self.maps[i][layer] for i in ids]) for layer in range(len(self.maps[0]))
        ]


class FixedMasks(nn.Module):
    """A mask source returning the left half of every image as foreground."""

    name = "fixed_left_half"

    def forward(self, images: torch.Tensor, class_word: str) -> torch.Tensor:
        masks = torch.zeros(images.shape[0], 1, *images.shape[-2:])
        masks[..., : images.shape[-1] // 2] = 1
        return masks

    def definition(self) -> dict[str, str]:
        return {"source": self.name}
