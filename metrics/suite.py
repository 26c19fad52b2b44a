"""Build the metrics a `MetricSettings` names, loading their models."""

from __future__ import annotations

from typing import Any

from metrics.base import EvalMetric
from metrics.blip_t import BLIPTextScore
from metrics.clip_i import CLIPImageSimilarity
from metrics.clip_t import CLIPTextScore
from metrics.dino_fg import DINOForegroundSimilarity
from metrics.dino_i import DINOImageSimilarity
from metrics.gram_d import GramDistance
from metrics.settings import MetricSettings


def build_metrics(settings: MetricSettings) -> dict[str, EvalMetric]:
    """Load the models and build the metrics, in the order of ``settings.metrics``."""
    scale, resize, crop = settings.score_scale, settings.dino_resize, settings.dino_crop
    builders: dict[str, Any] = {
        "clip_t": lambda: CLIPTextScore(settings.clip_model, scale),
        "clip_i": lambda: CLIPImageSimilarity(settings.clip_model, scale),
        "dino_i": lambda: DINOImageSimilarity(settings.dino_model, scale, resize, crop),
        "blip_t": lambda: BLIPTextScore(settings.blip_backend, settings.blip_model, scale),
        "dino_fg": lambda: DINOForegroundSimilarity(
            settings.dino_model,
            scale,
            resize,
            crop,
            mask_source=settings.mask_source,
            grounding_dino_model=settings.grounding_dino_model,
            sam_model=settings.sam_model,
            background=settings.mask_background,
        ),
        "gram_d": lambda: GramDistance(settings.gram_model, resize, crop),
    }
    return {key: builders[key]() for key in dict.fromkeys(settings.metrics)}
