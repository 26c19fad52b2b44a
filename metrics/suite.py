"""Build the metrics a `MetricSettings` names, loading their models."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from metrics.base import EvalMetric
from metrics.blip_t import BLIPTextScore
from metrics.clip_i import CLIPImageSimilarity
from metrics.clip_t import CLIPTextScore
from metrics.dino_fg import DINOForegroundSimilarity
from metrics.dino_i import DINOImageSimilarity
from metrics.face_sim import FaceSimilarity
from metrics.gram_d import GramDistance
from metrics.per_concept import REFERENCE_METRICS, PerConcept
from metrics.settings import MetricSettings


def build_metrics(
    settings: MetricSettings, concepts: Sequence[int] | None = None
) -> dict[str, EvalMetric | PerConcept]:
    """Load the models and build the metrics, in the order of ``settings.metrics``.

    With ``concepts`` (a multi-concept prompt set's), each reference metric becomes a
    `PerConcept` of one metric per concept; None: one metric each, as for a single concept.
    """
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
        "face_sim": lambda: FaceSimilarity(settings.face_model, scale, settings.face_detector),
    }
    keys = dict.fromkeys(settings.metrics)
    if concepts is None:
        return {key: builders[key]() for key in keys}
    return {
        key: PerConcept.build(key, builders[key], concepts)
        if key in REFERENCE_METRICS
        else builders[key]()
        for key in keys
    }
