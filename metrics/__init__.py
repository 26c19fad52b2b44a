"""Evaluation metrics (torchmetrics): CLIP-T, CLIP-I, DINO-I, BLIP-T, DINO-FG, Gram-D.

Each metric takes generated images (B, 3, H, W) in [0, 1] and their scoring prompts, keeps sums
and counts as DDP-reduced states, and records its definition (model, preprocessing, scale).
`MetricSettings` (metrics/settings.py) picks the metrics and models; `build_metrics` loads them.
"""

from metrics.settings import ALL_METRICS, MetricSettings

__all__ = ["ALL_METRICS", "MetricSettings"]
