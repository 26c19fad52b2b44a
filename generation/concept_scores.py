"""Which concept's photos each test metric compares with, and what a batch item names.

A single-concept prompt set scores every metric against the first concept's photos, as it
always has. A multi-concept set ("a {0} and a {1} on the beach") names concepts by index: its
reference metrics are `PerConcept` (metrics/per_concept.py), each inner metric given its
concept's photos and class word, and each item tells which concepts it names ("0 1").
"""

from __future__ import annotations

from typing import Any

import torch

from metrics.images import pil_to_tensor
from metrics.per_concept import PerConcept

CONCEPTS_FIELD = "concepts"  # the manifest column / batch key of a multi-concept item: "0 1"


def set_references(
    metrics: dict[str, Any], datamodule: Any, concepts: list[Any], named: list[int] | None
) -> None:
    """Give each metric its references: ``named`` concepts' own for a `PerConcept`, the first
    concept's otherwise (``concepts``: the module's `ConceptSpec` list, for the class words)."""
    references = {
        i: [pil_to_tensor(image) for image in datamodule.reference_images(i)] for i in named or [0]
    }
    for metric in metrics.values():
        if isinstance(metric, PerConcept):
            for i in metric.concepts:
                metric.set_concept_references(i, references[i], concepts[i].class_word)
        else:
            metric.set_references(references[0], concepts[0].class_word)


def update(metric: Any, images: torch.Tensor, batch: dict[str, Any]) -> None:
    """One metric's update with the batch's scoring prompts (and named concepts)."""
    prompts = list(batch["score_prompt"])
    if isinstance(metric, PerConcept):
        named = [[int(i) for i in item.split()] for item in batch[CONCEPTS_FIELD]]
        metric.update(images, prompts, named)
    else:
        metric.update(images, prompts)


def compute(metrics: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Every value by key; a `PerConcept` gives its mean and each concept's (``clip_i_c0``)."""
    values: dict[str, torch.Tensor] = {}
    for key, metric in metrics.items():
        value = metric.compute()  # syncs under DDP
        values.update(value if isinstance(value, dict) else {key: value})
    return values


def concepts_record(datamodule: Any, concepts: list[Any]) -> dict[str, Any]:
    """results.json's ``concepts``: each concept a multi-concept set names, with the suffix of
    its scores; nothing for a single-concept set (its ``concept`` entry says it all)."""
    named = getattr(datamodule, "eval_concepts", None)
    if named is None:
        return {}
    record = [
        {
            "index": i,
            "placeholder": f"{{{i}}}",
            "score_suffix": f"_c{i}",
            "token": concepts[i].token,
            "class_word": concepts[i].class_word,
            "num_reference_images": len(datamodule.reference_images(i)),
        }
        for i in named
    ]
    return {"concepts": record}
