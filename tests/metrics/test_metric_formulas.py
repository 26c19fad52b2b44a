"""Each metric against an independent computation of its paper's formula on fixed features."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from metric_fakes import (
    FakeBlipEncoder,
    FakeClipModel,
    FakeClipProcessor,
    FakeVggEncoder,
    FixedMasks,
    id_images,
    stack_features,
)

from metrics.blip_t import BLIPTextScore
from metrics.clip_i import CLIPImageSimilarity
from metrics.clip_t import CLIPTextScore
from metrics.dino_fg import DINOForegroundSimilarity
from metrics.dino_i import DINOImageSimilarity
from metrics.gram_d import GramDistance


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def mean_pairwise_cosine(generated: np.ndarray, references: np.ndarray) -> float:
    """DreamBooth's CLIP-I / DINO: the average over every generated x reference pair."""
    values = [cosine(g, r) for g in generated for r in references]
    return sum(values) / len(values)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.mark.parametrize("metric_class", [CLIPImageSimilarity, DINOImageSimilarity])
def test_image_similarity_is_the_mean_over_all_pairs(metric_class, rng) -> None:
    references = rng.normal(size=(3, 8))
    generated = rng.normal(size=(7, 8)) + references[0]  # correlated, so the mean is not ~0
    metric = metric_class(encoder=stack_features)
    metric.set_references(list(torch.tensor(references)), "dog")
    metric.update(torch.tensor(generated[:4]))  # two batches: states accumulate
    metric.update(torch.tensor(generated[4:]))
    expected = mean_pairwise_cosine(generated, references)
    assert metric.compute().item() == pytest.approx(expected, abs=1e-9)
    assert metric.pairs.item() == 7 * 3


def test_score_scale_multiplies_the_cosine(rng) -> None:
    references, generated = rng.normal(size=(2, 5)), rng.normal(size=(3, 5))
    metric = DINOImageSimilarity(encoder=stack_features, scale=100.0)
    metric.set_references(list(torch.tensor(references)), "dog")
    metric.update(torch.tensor(generated))
    expected = 100 * mean_pairwise_cosine(generated, references)
    assert metric.compute().item() == pytest.approx(expected, abs=1e-7)


def clip_t(
    image_table: torch.Tensor, text_table: torch.Tensor, scale: float = 1.0
) -> CLIPTextScore:
    fake = (FakeClipModel(image_table, text_table), FakeClipProcessor())
    return CLIPTextScore(scale=scale, model_and_processor=lambda: fake)


def test_clip_t_goes_through_clipscore_and_reports_the_mean_cosine(rng) -> None:
    images, texts = rng.normal(size=(6, 16)), rng.normal(size=(6, 16))
    texts[:] += images  # positively aligned pairs
    metric = clip_t(torch.tensor(images, dtype=torch.float), torch.tensor(texts, dtype=torch.float))
    metric.update(id_images([0, 1, 2]), ["p0", "p1", "p2"])
    metric.update(id_images([3, 4, 5]), ["p3", "p4", "p5"])
    expected = sum(cosine(images[i], texts[i]) for i in range(6)) / 6
    assert expected > 0
    assert metric.compute().item() == pytest.approx(expected, abs=1e-5)
    # CLIPScore's own state holds 100 x cosine; we report it on the cosine scale.
    assert metric.score.item() == pytest.approx(100 * 6 * expected, rel=1e-5)


def test_clip_t_keeps_clipscores_clamp_at_zero(rng) -> None:
    images = rng.normal(size=(2, 4))
    metric = clip_t(
        torch.tensor(images, dtype=torch.float), torch.tensor(-images, dtype=torch.float), 100
    )
    metric.update(id_images([0, 1]), ["p0", "p1"])
    assert metric.compute().item() == 0.0  # cos = -1 each, clamped as torchmetrics does


def test_blip2_score_takes_the_best_query_per_pair(rng) -> None:
    queries, texts = rng.normal(size=(5, 4, 8)), rng.normal(size=(5, 8))
    encoder = FakeBlipEncoder(torch.tensor(queries), torch.tensor(texts))
    metric = BLIPTextScore(backend="blip2", encoder=encoder)
    metric.update(id_images([0, 1, 2]), ["p0", "p1", "p2"])
    metric.update(id_images([3, 4]), ["p3", "p4"])
    expected = sum(max(cosine(q, texts[i]) for q in queries[i]) for i in range(5)) / 5
    assert metric.compute().item() == pytest.approx(expected, abs=1e-9)


def test_blip_score_is_the_plain_cosine_with_one_query(rng) -> None:
    images, texts = rng.normal(size=(3, 1, 6)), rng.normal(size=(3, 6))
    metric = BLIPTextScore(
        backend="blip", encoder=FakeBlipEncoder(torch.tensor(images), torch.tensor(texts))
    )
    metric.update(id_images([2, 0, 1]), ["p2", "p0", "p1"])
    expected = sum(cosine(images[i, 0], texts[i]) for i in range(3)) / 3
    assert metric.compute().item() == pytest.approx(expected, abs=1e-9)


def gatys_style_distance(maps_a: list[np.ndarray], maps_b: list[np.ndarray]) -> float:
    """Gatys et al. 2016, eq. 3-5: E_l = 1/(4 N^2 M^2) sum (G - A)^2, L = sum_l w_l E_l."""
    total = 0.0
    for fa, fb in zip(maps_a, maps_b):
        n, m = fa.shape[0], fa.shape[1] * fa.shape[2]
        ga = np.zeros((n, n))
        gb = np.zeros((n, n))
        for i in range(n):
            for j in range(n):
                ga[i, j] = np.sum(fa[i] * fa[j])
                gb[i, j] = np.sum(fb[i] * fb[j])
        total += (1 / len(maps_a)) * np.sum((ga - gb) ** 2) / (4 * n**2 * m**2)
    return total


def test_gram_d_is_the_mean_gatys_style_loss_over_all_pairs(rng) -> None:
    shapes = [(3, 4, 4), (5, 2, 2)]
    maps = [[rng.normal(size=s) for s in shapes] for _ in range(5)]  # images 0-1 refs, 2-4 gen
    encoder = FakeVggEncoder([[torch.tensor(m) for m in image] for image in maps])
    metric = GramDistance(encoder=encoder)
    metric.set_references(list(id_images([0, 1])), "style")
    metric.update(id_images([2, 3]))
    metric.update(id_images([4]))
    pairs = [gatys_style_distance(maps[g], maps[r]) for g in (2, 3, 4) for r in (0, 1)]
    assert metric.compute().item() == pytest.approx(sum(pairs) / 6, rel=1e-9)
    assert not metric.higher_is_better


def test_gram_d_is_zero_for_identical_style(rng) -> None:
    maps = [[rng.normal(size=(2, 3, 3))]]
    metric = GramDistance(encoder=FakeVggEncoder([[torch.tensor(m) for m in maps[0]]]))
    metric.set_references(list(id_images([0])), "style")
    metric.update(id_images([0]))
    assert metric.compute().item() == 0.0


def test_dino_fg_scores_masked_images(rng) -> None:
    references = torch.tensor(rng.uniform(size=(2, 3, 4, 6)), dtype=torch.float)
    generated = torch.tensor(rng.uniform(size=(3, 3, 4, 6)), dtype=torch.float)
    metric = DINOForegroundSimilarity(
        encoder=stack_features, mask_source=FixedMasks(), background=0.5
    )
    metric.set_references(list(references), "dog")
    metric.update(generated)

    def masked(image: np.ndarray) -> np.ndarray:
        out = np.full_like(image, 0.5)  # background value everywhere ...
        out[..., :3] = image[..., :3]  # ... except the left half (the fixed mask)
        return out.ravel()

    expected = mean_pairwise_cosine(
        np.stack([masked(g) for g in generated.numpy()]),
        np.stack([masked(r) for r in references.numpy()]),
    )
    assert metric.compute().item() == pytest.approx(expected, abs=1e-6)
    assert metric.definition()["masks"] == {"source": "fixed_left_half"}


def test_update_before_references_is_an_error() -> None:
    metric = DINOImageSimilarity(encoder=stack_features)
    with pytest.raises(RuntimeError, match="set_references"):
        metric.update(torch.ones(1, 4))
    with pytest.raises(ValueError, match="at least one reference"):
        metric.set_references([], "dog")


def test_reset_keeps_references_and_clears_sums(rng) -> None:
    references, generated = rng.normal(size=(2, 4)), rng.normal(size=(2, 4))
    metric = DINOImageSimilarity(encoder=stack_features)
    metric.set_references(list(torch.tensor(references)), "dog")
    metric.update(torch.tensor(generated))
    first = metric.compute().item()
    metric.reset()
    assert metric.pairs.item() == 0
    metric.update(torch.tensor(generated))
    assert metric.compute().item() == pytest.approx(first) and not math.isnan(first)
