"""CLIP for CLIP-T and CLIP-I: one loaded model and processor, in the shape torchmetrics wants.

torchmetrics' CLIPScore calls ``model.get_image_features`` / ``get_text_features`` and expects
tensors; transformers 5 returns a model output whose ``pooler_output`` holds the projected
features. `ClipFeatures` is the thin adapter between the two, so CLIPScore's own update and
compute run unchanged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from metrics.images import to_uint8
from pretrained.eval_models import load_eval_model

if TYPE_CHECKING:
    from transformers import CLIPModel, CLIPProcessor


def _features(output: Any) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class ClipFeatures(nn.Module):
    """A CLIPModel whose feature methods return the projected feature tensors."""

    def __init__(self, model: CLIPModel) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.config = model.config

    def get_image_features(self, pixel_values: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return _features(self.model.get_image_features(pixel_values=pixel_values, **kwargs))

    def get_text_features(
        self, input_ids: torch.Tensor, attention_mask: Any = None
    ) -> torch.Tensor:
        return _features(
            self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask)
        )


def load_clip(name: str, what: str = "CLIP-T / CLIP-I") -> tuple[ClipFeatures, CLIPProcessor]:
    """The shared (model, processor) pair of a hub id, folder or ``tiny-clip``."""

    def loader(path: str) -> tuple[ClipFeatures, CLIPProcessor]:
        from transformers import CLIPModel, CLIPProcessor

        return ClipFeatures(CLIPModel.from_pretrained(path)), CLIPProcessor.from_pretrained(path)

    return load_eval_model(name, loader, what, "evaluation.metrics.clip_model")


class ClipImageEncoder(nn.Module):
    """CLIP image features (projected) with the checkpoint's own processor."""

    def __init__(self, model: ClipFeatures, processor: CLIPProcessor) -> None:
        super().__init__()
        self.model, self.processor = model, processor

    def forward(self, images: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        device = next(self.model.parameters()).device
        # uint8 0..255, what the processor's rescale expects (as CLIPScore feeds it).
        batch = [to_uint8(image[None])[0].cpu() for image in images]
        pixels = self.processor(images=batch, return_tensors="pt")["pixel_values"].to(device)
        return self.model.get_image_features(pixels)


def processor_definition(processor: Any) -> dict[str, Any]:
    """The preprocessing a checkpoint's image processor applies, for the results file."""
    image_processor = getattr(processor, "image_processor", processor)
    keys = ("size", "crop_size", "resample", "image_mean", "image_std", "do_center_crop")
    return {k: _plain(getattr(image_processor, k)) for k in keys if hasattr(image_processor, k)}


def _plain(value: Any) -> Any:
    if isinstance(value, dict | list | tuple | str | int | float | bool) or value is None:
        return value if not isinstance(value, tuple) else list(value)
    return str(value)
