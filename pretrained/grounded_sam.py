"""Grounded-SAM's two steps, shared by DINO-FG's masks and CLIF's segmentation.

Grounding-DINO finds the best box for a text ("dog."), SAM segments what a box or a point
prompts. Both run through transformers (``GroundingDinoForObjectDetection``, ``SamModel``) and
load by hub id, folder or tiny name through `pretrained.eval_models.load_eval_model`, so a
missing model fails with the how-to-provide-it message naming the caller's config option.
"""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image

from pretrained.eval_models import load_eval_model

Box = list[float]  # x0, y0, x1, y1 in pixels of the image
Point = list[float]  # x, y in pixels


def _grounding_dino_from(path: str) -> tuple[Any, Any]:
    from transformers import AutoProcessor, GroundingDinoForObjectDetection

    model = GroundingDinoForObjectDetection.from_pretrained(path)
    return model.eval().requires_grad_(False), AutoProcessor.from_pretrained(path)


def _sam_from(path: str) -> tuple[Any, Any]:
    from transformers import AutoProcessor, SamModel

    model = SamModel.from_pretrained(path)
    return model.eval().requires_grad_(False), AutoProcessor.from_pretrained(path)


def load_grounding_dino(name: str, what: str, option: str) -> tuple[Any, Any]:
    """(model, processor), shared per (`what`, name); `option` is named when it is missing."""
    return load_eval_model(name, _grounding_dino_from, what, option)


def load_sam(name: str, what: str, option: str) -> tuple[Any, Any]:
    """(model, processor), shared per (`what`, name); `option` is named when it is missing."""
    return load_eval_model(name, _sam_from, what, option)


def grounding_text(words: str) -> str:
    """Grounding-DINO's prompt for one phrase: lower case, ending in a period ("dog.")."""
    return f"{words.strip().lower()}."


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def best_boxes(
    detector: Any, processor: Any, images: list[Image.Image], texts: list[str]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image, the highest-scoring box for its text: (B, 4) pixel x0 y0 x1 y1 clamped to
    the image, and (B,) scores (a query's best text-token probability, Grounding-DINO's)."""
    inputs = processor(images=images, text=texts, return_tensors="pt", padding=True)
    outputs = detector(**inputs.to(_device(detector)))
    scores = outputs.logits.sigmoid().amax(dim=-1)  # (B, queries)
    best = scores.argmax(dim=1)
    rows = torch.arange(len(images))
    cx, cy, w, h = outputs.pred_boxes[rows, best].float().cpu().unbind(dim=1)  # relative
    sizes = torch.tensor([image.size for image in images], dtype=torch.float32)  # (W, H)
    width, height = sizes[:, 0], sizes[:, 1]
    boxes = torch.stack([(cx - w / 2) * width, (cy - h / 2) * height,
                         (cx + w / 2) * width, (cy + h / 2) * height], dim=1)  # fmt: skip
    boxes[:, 0::2] = boxes[:, 0::2].clamp(min=0).minimum(width[:, None])
    boxes[:, 1::2] = boxes[:, 1::2].clamp(min=0).minimum(height[:, None])
    return boxes, scores[rows, best].float().cpu()


@torch.no_grad()
def sam_masks(
    sam: Any,
    processor: Any,
    images: list[Image.Image],
    boxes: list[list[Box]] | None = None,
    points: list[list[Point]] | None = None,
    chunk: int = 16,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per image, SAM's three masks for each prompt, (N, 3, H, W) bool at the image's size
    (logits > 0), and their predicted IoUs (N, 3). Prompts are boxes or single points, the
    same number per image; the image is encoded once and the prompts decoded `chunk` at a
    time (the upsampled masks of many prompts are large)."""
    if (boxes is None) == (points is None):
        raise ValueError("sam_masks takes boxes or points (one of them).")
    if boxes is not None:
        key, prompts = "input_boxes", boxes
    else:
        key, prompts = "input_points", [[[point] for point in image] for image in points]
    inputs = processor(images=images, **{key: prompts}, return_tensors="pt")
    device = _device(sam)
    embeddings = sam.get_image_embeddings(inputs["pixel_values"].to(device))
    original, reshaped = inputs["original_sizes"], inputs["reshaped_input_sizes"]
    masks, scores = [], []
    for start in range(0, inputs[key].shape[1], chunk):
        part = inputs[key][:, start : start + chunk].to(device)
        out = sam(image_embeddings=embeddings, **{key: part}, multimask_output=True)
        masks.append(processor.image_processor.post_process_masks(
            out.pred_masks.cpu(), original, reshaped))  # fmt: skip
        scores.append(out.iou_scores.float().cpu())
    return [
        (torch.cat([m[i] for m in masks]).bool(), torch.cat([s[i] for s in scores]))
        for i in range(len(images))
    ]


def best_masks(masks: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) masks and (N, 3) IoUs -> each prompt's mask of best predicted IoU."""
    return masks[torch.arange(len(masks)), scores.argmax(dim=-1)]
