"""What every evaluation metric shares: its key, its recorded definition, reference images.

All metrics take generated images as (B, 3, H, W) floats in [0, 1] plus the prompts to score
them against (``update(images, prompts)``); image-similarity metrics first receive the subject's
reference photos once (``set_references``). States are sums and counts reduced by ``sum``, so
the value after DDP sync is exactly the single-process value.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torchmetrics import Metric


class EvalMetric(Metric):
    """Base of our metrics: a result key and a definition written next to the value."""

    key: ClassVar[str] = "metric"
    is_differentiable = False
    full_state_update = False

    def set_references(self, images: list[torch.Tensor], class_word: str) -> None:
        """The subject's photos, each (3, H, W) in [0, 1] (sizes may differ); default: unused."""

    def definition(self) -> dict[str, Any]:
        """Model, preprocessing, formula and scale of the reported value."""
        raise NotImplementedError(f"{type(self).__name__} must implement definition().")


class MeanPairwiseCosine(EvalMetric):
    """Mean cosine over ALL generated x reference pairs of an image encoder's features.

    ``encoder`` maps a batch (B, 3, H, W) or a list of (3, H, W) images to features (B, D); tests
    pass their own to check the formula on fixed features.
    """

    higher_is_better = True

    def __init__(self, encoder: Any, scale: float = 1.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.encoder = encoder
        self.scale = scale
        self.add_state("cosine_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("pairs", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.reference_features: torch.Tensor | None = None

    def encode(self, images: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        return self.encoder(images)

    def set_references(self, images: list[torch.Tensor], class_word: str) -> None:
        if len(images) == 0:
            raise ValueError(f"{self.key} needs at least one reference image of the subject.")
        with torch.no_grad():
            features = self.encode([image.to(self.device) for image in images])
        self.reference_features = F.normalize(features.double(), dim=-1)

    def update(self, images: torch.Tensor, prompts: list[str] | None = None) -> None:
        if self.reference_features is None:
            raise RuntimeError(f"{self.key}: call set_references() before update().")
        with torch.no_grad():
            generated = F.normalize(self.encode(images).double(), dim=-1)
        reference = self.reference_features.to(generated.device)
        self.cosine_sum += (generated @ reference.T).sum()
        self.pairs += generated.shape[0] * reference.shape[0]

    def compute(self) -> torch.Tensor:
        return self.scale * self.cosine_sum / self.pairs
