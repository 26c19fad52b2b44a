"""SemanticDrift: rank and cosine against independent computations, on the live text path."""

from __future__ import annotations

import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers import optimizer_with_lr, tiny_datamodule, tiny_trainer

from callbacks.drift_phrases import ADJECTIVES, adjective_phrases
from callbacks.drift_plot import DriftPlot, drift_figure
from callbacks.render import figure_to_array
from callbacks.semantic_drift import SemanticDrift, cosine_distance, drift_rank
from core.concept import ConceptSpec
from models import CustomDiffusion, TextualInversion

NO_LOGGERS = SimpleNamespace(loggers=[])


def test_rank_on_constructed_embeddings_with_a_known_answer() -> None:
    # 35 pairs +v, -v with |v| = 1..35: the centre is the origin, two phrases at each radius.
    generator = torch.Generator().manual_seed(0)
    directions = torch.nn.functional.normalize(torch.randn(35, 6, generator=generator), dim=-1)
    radii = torch.arange(1, 36, dtype=torch.float32)[:, None]
    adjectives = torch.cat([directions * radii, -directions * radii])
    concept = torch.nn.functional.normalize(torch.randn(6, generator=generator), dim=0)
    assert drift_rank(adjectives, concept * 10.5) == 21  # 20 phrases (radii 1..10) are closer
    assert drift_rank(adjectives, concept * 0.5) == 1
    assert drift_rank(adjectives, concept * 99.0) == 71


def test_rank_matches_a_sort_of_all_distances_to_the_mean() -> None:
    rng = np.random.default_rng(1)
    for _ in range(20):
        adjectives = rng.normal(size=(70, 12))
        concept = rng.normal(size=12) * rng.uniform(0.3, 2.0)
        centre = adjectives.mean(axis=0)
        distances = np.linalg.norm(np.vstack([adjectives, concept]) - centre, axis=1)
        expected = int(np.where(np.argsort(distances, kind="stable") == 70)[0][0]) + 1
        assert drift_rank(torch.tensor(adjectives), torch.tensor(concept)) == expected


def test_cosine_distance_matches_the_formula() -> None:
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=32), rng.normal(size=32)
    expected = 1 - a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
    assert cosine_distance(torch.tensor(a), torch.tensor(b)) == pytest.approx(expected, abs=1e-6)
    x = torch.tensor([1.0, 0.0])
    assert cosine_distance(x, x) == pytest.approx(0.0, abs=1e-7)
    assert cosine_distance(x, torch.tensor([0.0, 3.0])) == pytest.approx(1.0)
    assert cosine_distance(x, -x) == pytest.approx(2.0)


def test_phrases_are_seventy_distinct_adjectives_with_the_class_word() -> None:
    phrases = adjective_phrases("dog")
    assert len(set(ADJECTIVES)) == len(ADJECTIVES) >= 70
    assert phrases[0] == "a white dog" and "an old dog" in phrases and "an elderly dog" in phrases


def _eos_feature(module: TextualInversion, prompt: str) -> np.ndarray:
    """Independently: the hidden state at the first end-of-text id of the tokenized prompt."""
    encoding = module.encode_text([prompt])
    ids = encoding.input_ids[0].tolist()
    return encoding.hidden_states[0, ids.index(module.tokenizer.eos_token_id)].double().numpy()


def test_measure_reads_the_current_concept_vectors(tiny_sd_path: object) -> None:
    module = TextualInversion(concepts=[ConceptSpec("<v1>", "toy")])
    drift = SemanticDrift(perplexity=10)
    with torch.no_grad():
        before = drift.measure(NO_LOGGERS, module, step=0)
        a = _eos_feature(module, "a photo of a <v1> toy")
        b = _eos_feature(module, "a photo of a toy")
        expected = 1 - a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
        assert before["drift/cosine"] == pytest.approx(expected, abs=1e-5)
        assert 1 <= before["drift/rank"] <= 71
        image = drift.last_images["drift/tsne"]
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[-1] == 3
        # A concept vector far from every word must drift: last rank, larger cosine distance.
        vectors = module.concept_tokens.embedding.vectors
        vectors.copy_(50 * torch.randn(vectors.shape, generator=torch.Generator().manual_seed(0)))
        after = drift.measure(NO_LOGGERS, module, step=1)
    assert after["drift/rank"] == 71
    assert after["drift/cosine"] > before["drift/cosine"] + 0.05


def test_bad_settings_fail_when_the_callback_is_built() -> None:
    with pytest.raises(ValueError, match="perplexity"):
        SemanticDrift(perplexity=80)
    with pytest.raises(ValueError, match="placeholder"):
        SemanticDrift(cosine_template="a photo of a dog")
    with pytest.raises(ValueError, match="every_n_steps"):
        SemanticDrift(every_n_steps=0)


def test_spl_keeps_the_concept_closer_to_its_class(tmp_path: Path) -> None:
    """Same seed and data: Custom Diffusion + SPL ends with a lower drift/cosine than without."""
    spl = pytest.importorskip("losses.spl")
    final = {}
    for label, regularizers in (("plain", []), ("spl", [spl.SemanticPreservationLoss()])):
        datamodule = tiny_datamodule()
        module = CustomDiffusion(
            concepts=datamodule.concepts,
            optimizer=optimizer_with_lr(1e-2),
            regularizers=regularizers,
        )
        drift = SemanticDrift(every_n_steps=100, perplexity=10)
        trainer = tiny_trainer(tmp_path / label, max_steps=8, callbacks=[drift])
        trainer.fit(module, datamodule=datamodule)
        assert [step for step, _ in drift.history] == [0, 8]
        final[label] = drift.history[-1][1]["drift/cosine"]
        start = drift.history[0][1]["drift/cosine"]
    assert final["plain"] > start  # the plain run drifts ...
    assert final["spl"] < final["plain"]  # ... and SPL holds the concept nearer its class


def test_drift_image_writes_the_labels_where_annotate_would() -> None:
    rng = np.random.default_rng(0)
    adjectives = [f"word{i}" for i in range(12)]
    plane = rng.normal(size=(len(adjectives) + 3, 2))
    args = (plane, adjectives, "a <v1> dog", "a dog", "title")
    annotated = figure_to_array(drift_figure(*args))
    written = DriftPlot(len(adjectives)).image(*args)
    bare = figure_to_array(drift_figure(*args, label_points=False))
    assert written.shape == annotated.shape == bare.shape
    assert written.dtype == np.uint8
    # The labels are there (ink beyond the bare figure) and sit where matplotlib puts them.
    added = np.abs(written.astype(int) - bare.astype(int)).sum(-1) > 0
    annotated_added = np.abs(annotated.astype(int) - bare.astype(int)).sum(-1) > 0
    assert added.sum() > 0.5 * annotated_added.sum()
    overlap = (added & annotated_added).sum() / annotated_added.sum()
    assert overlap > 0.3


def test_a_redrawn_plot_is_the_plot_drawn_afresh() -> None:
    """The callback redraws one figure; nothing of an earlier measurement (points, limits,
    title) may show in the next."""
    rng = np.random.default_rng(1)
    adjectives = [f"word{i}" for i in range(12)]
    first = rng.normal(size=(len(adjectives) + 3, 2))
    second = 5 + 3 * rng.normal(size=first.shape)
    plot = DriftPlot(len(adjectives))
    plot.image(first, adjectives, "a <v1> dog", "a dog", "step 0")
    redrawn = plot.image(second, adjectives, "a <v1> dog", "a dog", "step 8")
    fresh = DriftPlot(len(adjectives)).image(second, adjectives, "a <v1> dog", "a dog", "step 8")
    assert np.array_equal(redrawn, fresh)
    with pytest.raises(ValueError, match="Expected 15 points"):
        plot.show(first[:-1], "a dog", "step 9")


def test_on_flux_both_sides_drift_clip_and_t5(tiny_flux_path: object) -> None:
    """drift/* is CLIP ViT-L's end-of-text feature, drift/t5/* T5's states averaged over the
    prompt's own tokens (pads left out), each checked against FluxPipeline's encoders."""
    from diffusers import FluxPipeline

    from models import load_export
    from models.exports_loading import export_with_manifest

    module = TextualInversion(
        pretrained_model_name_or_path="tiny-flux", concepts=[ConceptSpec("<v1>", "toy")]
    )
    with torch.no_grad():
        for tokens in module.encoder_concept_tokens:
            tokens.embedding.vectors.normal_(generator=torch.Generator().manual_seed(2))
    drift = SemanticDrift(perplexity=10)
    with torch.no_grad():
        metrics = drift.measure(NO_LOGGERS, module, step=0)
    assert {"drift/rank", "drift/cosine", "drift/t5/rank", "drift/t5/cosine"} <= set(metrics)
    assert "drift/t5/tsne" in drift.last_images
    with tempfile.TemporaryDirectory() as folder:
        export_with_manifest(module, Path(folder))
        pipe = FluxPipeline.from_pretrained(tiny_flux_path)
        load_export(pipe, folder)
    prompts = ["a photo of a <v1> toy", "a photo of a toy"]
    t5 = pipe.tokenizer_2(prompts, padding="max_length", return_tensors="pt").input_ids
    with torch.no_grad():
        states = pipe.text_encoder_2(t5)[0]
        own = (t5 != pipe.tokenizer_2.pad_token_id).float()[..., None]
        mean = (states * own).sum(1) / own.sum(1)
        clip_ids = pipe.tokenizer(prompts, padding="max_length", return_tensors="pt").input_ids
        last = pipe.text_encoder(clip_ids).last_hidden_state
        ends = (clip_ids == pipe.tokenizer.eos_token_id).int().argmax(-1)
        clip = last[torch.arange(2), ends]
    cos = torch.nn.functional.cosine_similarity
    t5_cosine = 1 - float(cos(mean[0], mean[1], 0))
    assert metrics["drift/t5/cosine"] == pytest.approx(t5_cosine, abs=1e-5)
    assert metrics["drift/cosine"] == pytest.approx(1 - float(cos(clip[0], clip[1], 0)), abs=1e-5)
