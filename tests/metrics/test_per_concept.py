"""PerConcept: each concept's images against that concept's own references, and their mean."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from metric_fakes import FixedMasks, stack_features

from metrics.clip_i import CLIPImageSimilarity
from metrics.dino_fg import DINOForegroundSimilarity
from metrics.per_concept import PerConcept


def mean_pairwise_cosine(generated: np.ndarray, references: np.ndarray) -> float:
    g = generated / np.linalg.norm(generated, axis=1, keepdims=True)
    r = references / np.linalg.norm(references, axis=1, keepdims=True)
    return float((g @ r.T).mean())


@pytest.fixture
def features() -> dict[str, np.ndarray]:
    """Two concepts' references around two directions, and images near one or the other."""
    rng = np.random.default_rng(0)
    a, b = np.eye(8)[0] * 3, np.eye(8)[1] * 3
    return {
        "refs_a": a + rng.normal(scale=0.3, size=(3, 8)),
        "refs_b": b + rng.normal(scale=0.3, size=(2, 8)),
        "near_a": a + rng.normal(scale=0.3, size=(4, 8)),
        "near_b": b + rng.normal(scale=0.3, size=(2, 8)),
    }


def per_concept_clip_i() -> PerConcept:
    return PerConcept.build("clip_i", lambda: CLIPImageSimilarity(encoder=stack_features), [0, 1])


def test_each_concept_scores_against_its_own_references(features) -> None:
    metric = per_concept_clip_i()
    metric.set_concept_references(0, list(torch.tensor(features["refs_a"])), "dog")
    metric.set_concept_references(1, list(torch.tensor(features["refs_b"])), "cat")
    # Images of concept A whose prompts name both concepts: A's score is high, B's low.
    metric.update(torch.tensor(features["near_a"]), None, [[0, 1]] * 4)
    values = metric.compute()
    assert list(values) == ["clip_i", "clip_i_c0", "clip_i_c1"]
    assert values["clip_i_c0"] > 0.8 > 0.2 > values["clip_i_c1"]
    expected = mean_pairwise_cosine(features["near_a"], features["refs_a"])
    assert values["clip_i_c0"].item() == pytest.approx(expected, abs=1e-9)
    assert values["clip_i"].item() == pytest.approx(
        (values["clip_i_c0"].item() + values["clip_i_c1"].item()) / 2, abs=1e-12
    )


def test_an_image_counts_only_for_the_concepts_its_prompt_names(features) -> None:
    metric = per_concept_clip_i()
    metric.set_concept_references(0, list(torch.tensor(features["refs_a"])), "dog")
    metric.set_concept_references(1, list(torch.tensor(features["refs_b"])), "cat")
    images = torch.tensor(np.concatenate([features["near_a"], features["near_b"]]))
    metric.update(images, ["p"] * 6, [[0]] * 4 + [[1]] * 2)
    values = metric.compute()
    assert values["clip_i_c1"].item() == pytest.approx(
        mean_pairwise_cosine(features["near_b"], features["refs_b"]), abs=1e-9
    )
    assert metric.metric(0).pairs.item() == 4 * 3 and metric.metric(1).pairs.item() == 2 * 2
    metric.reset()
    assert metric.metric(0).pairs.item() == 0 and metric.metric(1).pairs.item() == 0
    assert "per_concept" in metric.definition() and "formula" in metric.definition()
    with pytest.raises(ValueError, match="6 images but 1 concept lists"):
        metric.update(images, None, [[0]])


def test_dino_fg_masks_each_concept_by_its_own_class_word() -> None:
    seen: list[str] = []

    class RecordingMasks(FixedMasks):
        def forward(self, images: torch.Tensor, class_word: str) -> torch.Tensor:
            seen.append(class_word)
            return super().forward(images, class_word)

    metric = PerConcept.build(
        "dino_fg",
        lambda: DINOForegroundSimilarity(encoder=stack_features, mask_source=RecordingMasks()),
        [0, 1],
    )
    torch.manual_seed(0)
    metric.set_concept_references(0, [torch.rand(3, 2, 2)], "dog")
    metric.set_concept_references(1, [torch.rand(3, 2, 2)], "cat")
    seen.clear()
    metric.update(torch.rand(2, 3, 2, 2), None, [[0, 1], [1]])
    assert seen == ["dog", "cat"]
