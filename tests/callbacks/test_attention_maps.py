"""AttentionMaps: symmetric KL and class activation by the papers' formulas, heat-map images."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from callbacks.attention_maps import AttentionMaps, region_mean, subject_mask, symmetric_kl
from models import ConceptSpec, CustomDiffusion
from models.attention_capture import AttentionCapture

NO_LOGGERS = SimpleNamespace(loggers=[])


def test_symmetric_kl_matches_the_formula() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.uniform(0.01, 1.0, size=(16, 16)), rng.uniform(0.01, 1.0, size=(16, 16))
    p, q = a.ravel() / a.sum(), b.ravel() / b.sum()
    expected = 0.5 * np.sum(p * np.log(p / q)) + 0.5 * np.sum(q * np.log(q / p))
    assert symmetric_kl(torch.tensor(a), torch.tensor(b)) == pytest.approx(expected, rel=1e-9)
    # Known values: identical maps 0 (whatever their scale); two-pixel maps (0.9, 0.1) vs
    # (0.1, 0.9): KL both ways = 0.8 ln 9.
    assert symmetric_kl(torch.tensor(a), 3 * torch.tensor(a)) == pytest.approx(0.0, abs=1e-12)
    f64 = torch.float64
    two = symmetric_kl(torch.tensor([0.9, 0.1], dtype=f64), torch.tensor([0.1, 0.9], dtype=f64))
    assert two == pytest.approx(0.8 * np.log(9.0), rel=1e-9)


def test_class_activation_region() -> None:
    concept = torch.tensor([[0.0, 1.0], [3.0, 0.0]])  # mean 1: pixels (0, 1) and (1, 0)
    values = torch.tensor([[10.0, 2.0], [4.0, 20.0]])
    mask = subject_mask(concept)
    assert mask.tolist() == [[False, True], [True, False]]
    assert region_mean(values, mask) == pytest.approx(3.0)
    assert region_mean(values) == pytest.approx(9.0)


@pytest.fixture(scope="module")
def custom_diffusion(tiny_sd_path: object) -> CustomDiffusion:
    return CustomDiffusion(concepts=[ConceptSpec("<v1>", "toy")])


def test_measure_scalars_follow_from_the_captured_maps(custom_diffusion: CustomDiffusion) -> None:
    callback = AttentionMaps(prompts={"a {} on the beach": "beach"}, num_inference_steps=2)
    with torch.no_grad():
        measured = callback.measure(NO_LOGGERS, custom_diffusion, step=0)
        # Independently: capture the same generation, read token columns by hand.
        prompt = "a <v1> toy on the beach"
        with AttentionCapture(custom_diffusion.unet, resolution=16) as capture:
            custom_diffusion.generate([prompt], seed=0, num_inference_steps=2, guidance_scale=6.0)
        ids = custom_diffusion.encode_text([prompt]).input_ids[0].tolist()
    tokenizer = custom_diffusion.tokenizer
    column = {w: ids.index(tokenizer.convert_tokens_to_ids(f"{w}</w>")) for w in ("toy", "beach")}
    concept_column = ids.index(tokenizer.convert_tokens_to_ids("<v1>"))
    maps = capture.maps[1].double().numpy()  # row 0 is the unconditional prompt
    toy, beach, concept = maps[column["toy"]], maps[column["beach"]], maps[concept_column]
    assert measured["attn/class_activation"] == pytest.approx(toy.mean(), rel=1e-5)
    p, q = concept.ravel() / concept.sum(), beach.ravel() / beach.sum()
    skl = 0.5 * np.sum(p * np.log(p / q)) + 0.5 * np.sum(q * np.log(q / p))
    assert measured["attn/skl"] == pytest.approx(skl, rel=1e-4)
    images = callback.last_images
    assert set(images) == {"attn/<v1>", "attn/toy", "attn/beach", "attn/grid"}
    assert images["attn/<v1>"].shape == (3, 132, 132)  # one 128 px overlay, padded
    # The subject-region variant averages the class map where the concept attends most.
    masked = AttentionMaps(
        prompts={"a {} on the beach": "beach"},
        num_inference_steps=2,
        subject_region="concept_attention",
    )
    with torch.no_grad():
        inside = masked.measure(NO_LOGGERS, custom_diffusion, step=0)
    expected_inside = toy[concept >= concept.mean()].mean()
    assert inside["attn/class_activation"] == pytest.approx(expected_inside, rel=1e-5)


def test_bad_settings_fail_when_the_callback_is_built() -> None:
    with pytest.raises(ValueError, match="subject_region"):
        AttentionMaps(subject_region="mask")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not a whole word"):
        AttentionMaps(prompts={"a {} on the beach": "sea"})
