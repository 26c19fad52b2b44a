"""BLIP-T: prompt fidelity as the image-text cosine of a BLIP or BLIP-2 retrieval model.

Backend ``blip`` (default Salesforce/blip-itm-large-coco, what ClassDiffusion's code calls
BLIP2-T): cosine of the projected, normalised CLS features of the vision and text encoders,
the model's own ITC score (``use_itm_head=False``). Backend ``blip2`` (default
Salesforce/blip2-itm-vit-g): BLIP-2's ITC score, the largest cosine between the text CLS
feature and the 32 Q-Former query features (``use_image_text_matching_head=False``).
The prompt is the one CLIP-T scores (concept token replaced by the class word).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BatchFeature

from metrics.base import EvalMetric
from metrics.clip_model import processor_definition
from metrics.images import to_pil
from metrics.settings import BLIP_BACKENDS, check_choice
from pretrained.eval_models import load_eval_model

MODEL_CLASSES = {"blip": "BlipForImageTextRetrieval", "blip2": "Blip2ForImageTextRetrieval"}


def check_backend(backend: str) -> str:
    return check_choice("BLIP-T backend", backend, tuple(BLIP_BACKENDS))


class BlipEncoder(nn.Module):
    """(image features (B, Q, D), text features (B, D)), both L2-normalised; Q = 1 for BLIP."""

    def __init__(self, model: nn.Module, processor: Any, backend: str) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.processor, self.backend = processor, check_backend(backend)
        self.max_text_length = BLIP_BACKENDS[backend][1]

    def inputs(self, images: torch.Tensor, prompts: list[str]) -> BatchFeature:
        """Tokenizer and image processor called directly: BLIP-2's processor adds image tokens
        only when the checkpoint's model expects them (``image_token_index``), as done here."""
        text = self.processor.tokenizer(
            list(prompts),
            padding=True,
            truncation=True,
            max_length=self.max_text_length,
            return_tensors="pt",
        )
        input_ids, attention_mask = text["input_ids"], text["attention_mask"]
        image_token = getattr(self.model.config, "image_token_index", None)
        if self.backend == "blip2" and image_token is not None:
            queries = self.model.config.num_query_tokens
            input_ids = torch.cat([torch.full((len(prompts), queries), image_token), input_ids], 1)
            attention_mask = torch.cat(
                [torch.ones(len(prompts), queries).long(), attention_mask], 1
            )
        pixels = self.processor.image_processor(to_pil(images), return_tensors="pt")["pixel_values"]
        features = {"input_ids": input_ids, "attention_mask": attention_mask}
        return BatchFeature({**features, "pixel_values": pixels})

    def forward(
        self, images: torch.Tensor, prompts: list[str]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = self.inputs(images, prompts).to(next(self.model.parameters()).device)
        if self.backend == "blip":
            out = self.model(**inputs, use_itm_head=False)
            image = F.normalize(self.model.vision_proj(out.last_hidden_state[:, 0]), dim=-1)
            text = F.normalize(self.model.text_proj(out.question_embeds[:, 0]), dim=-1)
            return image[:, None], text
        out = self.model(**inputs, use_image_text_matching_head=False)
        return out.image_embeds, out.text_embeds


def load_blip(backend: str, name: str | None) -> tuple[nn.Module, Any, str]:
    """(model, processor, name) of a backend; ``name`` None takes the backend's default."""
    name = name or BLIP_BACKENDS[check_backend(backend)][0]

    def loader(path: str) -> tuple[nn.Module, Any]:
        import transformers

        model_class = getattr(transformers, MODEL_CLASSES[backend])
        processor = transformers.AutoProcessor.from_pretrained(path)
        return model_class.from_pretrained(path), processor

    model, processor = load_eval_model(
        name, loader, f"BLIP-T ({backend})", "evaluation.metrics.blip_model"
    )
    return model, processor, name


class BLIPTextScore(EvalMetric):
    """Mean over generated images of the BLIP / BLIP-2 image-text cosine with their prompt."""

    key = "blip_t"
    higher_is_better = True

    def __init__(
        self,
        backend: str = "blip",
        model: str | None = None,
        scale: float = 1.0,
        encoder: Any = None,
        **kwargs: Any,
    ) -> None:
        """``encoder`` ((images, prompts) -> features) replaces the model; tests pass their own."""
        super().__init__(**kwargs)
        self.backend = check_backend(backend)
        if encoder is None:
            blip, processor, model = load_blip(backend, model)
            encoder = BlipEncoder(blip, processor, backend)
        self.encoder, self.model_name, self.scale = encoder, model, scale
        self.add_state("cosine_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, images: torch.Tensor, prompts: list[str]) -> None:
        if len(images) != len(prompts):
            raise ValueError(f"BLIP-T got {len(images)} images for {len(prompts)} prompts.")
        with torch.no_grad():
            image, text = self.encoder(images, prompts)
        image = F.normalize(image.double(), dim=-1)
        text = F.normalize(text.double(), dim=-1)
        cosine = (image @ text[:, :, None]).squeeze(-1).amax(dim=1)  # best query per pair
        self.cosine_sum += cosine.sum()
        self.count += cosine.numel()

    def compute(self) -> torch.Tensor:
        return self.scale * self.cosine_sum / self.count

    def definition(self) -> dict[str, Any]:
        processor = getattr(self.encoder, "processor", None)
        return {
            "backend": self.backend,
            "model": self.model_name,
            "features": "normalised projected CLS (blip) / Q-Former query (blip2) features",
            "text": "generation prompt with the concept token replaced by the class word",
            "max_text_tokens": BLIP_BACKENDS[self.backend][1],
            "preprocessing": processor_definition(processor) if processor else "custom encoder",
            "formula": "mean over images of max over query tokens of cos(image_q, text)",
            "scale": self.scale,
        }
