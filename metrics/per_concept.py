"""Reference metrics of a multi-concept prompt set: one metric per concept, and their mean.

An image of "a <v1> dog and a <v2> cat on the beach" shows two subjects, so its subject fidelity
is two numbers: CLIP-I (DINO-I, DINO-FG, Gram-D) against the dog's photos and against the cat's.
`PerConcept` holds one ordinary metric per concept the prompts name, each with that concept's
references (and class word, which DINO-FG's masks look for), and updates concept i's with the
images whose prompt names it. It reports ``<key>_c<i>`` for concept i (the ``{i}`` of the
prompts; a name that is a TensorBoard tag and a CSV column as it stands) and, under the usual
``<key>``, their mean over the concepts. Each inner metric keeps its own DDP-reduced states;
CLIP-T and BLIP-T score the whole prompt and are not wrapped.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from metrics.base import EvalMetric

# The metrics that compare with reference photos, and so are scored per concept.
REFERENCE_METRICS = ("clip_i", "dino_i", "dino_fg", "gram_d")


def concept_key(key: str, concept: int) -> str:
    """``clip_i`` of concept 1 -> ``clip_i_c1``."""
    return f"{key}_c{concept}"


class PerConcept(nn.Module):
    """One `EvalMetric` per named concept; not a torchmetrics Metric itself (its inner ones
    are, and each syncs on compute), so it holds no states of its own."""

    def __init__(self, key: str, metrics: Mapping[int, EvalMetric]) -> None:
        super().__init__()
        if not metrics:
            raise ValueError(f"{key}: a per-concept metric needs at least one concept.")
        self.key = key
        self.concepts = sorted(metrics)
        self.inner = nn.ModuleDict({str(i): metrics[i] for i in self.concepts})

    @classmethod
    def build(cls, key: str, make: Callable[[], EvalMetric], concepts: Sequence[int]) -> PerConcept:
        """``make()`` once per concept (the evaluation models are loaded once and shared)."""
        return cls(key, {i: make() for i in concepts})

    def metric(self, concept: int) -> EvalMetric:
        return self.inner[str(concept)]  # type: ignore[return-value]

    def set_concept_references(
        self, concept: int, images: list[torch.Tensor], class_word: str
    ) -> None:
        """Concept ``concept``'s photos, each (3, H, W) in [0, 1], and its class word."""
        self.metric(concept).set_references(images, class_word)

    def update(
        self,
        images: torch.Tensor,
        prompts: list[str] | None,
        concepts: Sequence[Collection[int]],
    ) -> None:
        """Image j counts for each concept in ``concepts[j]`` (the ones its prompt names)."""
        if len(concepts) != len(images):
            raise ValueError(f"{self.key}: {len(images)} images but {len(concepts)} concept lists.")
        for concept in self.concepts:
            rows = [j for j, named in enumerate(concepts) if concept in named]
            if rows:
                chosen = None if prompts is None else [prompts[j] for j in rows]
                self.metric(concept).update(images[rows], chosen)

    def compute(self) -> dict[str, torch.Tensor]:
        """``{key: mean over concepts, key_c<i>: concept i's value, ...}``."""
        values = {concept_key(self.key, i): self.metric(i).compute() for i in self.concepts}
        mean = torch.stack([v.double() for v in values.values()]).mean()
        return {self.key: mean, **values}

    def reset(self) -> None:
        for concept in self.concepts:
            self.metric(concept).reset()

    def definition(self) -> dict[str, Any]:
        return {
            **self.metric(self.concepts[0]).definition(),
            "per_concept": (
                f"{self.key}_c<i>: the formula over the images whose prompt names concept i "
                f"('{{i}}'), against concept i's own references; {self.key}: the mean of "
                f"{self.key}_c<i> over concepts {self.concepts}"
            ),
        }
