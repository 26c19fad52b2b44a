"""AttentionMaps: symmetric KL and class activation by the papers' formulas, heat-map images."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from callbacks.attention_capture import AttentionCapture
from callbacks.attention_maps import AttentionMaps, region_mean, subject_mask, symmetric_kl
from core.concept import ConceptSpec
from models import CustomDiffusion

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


class _Data:
    """A DataModule stand-in with one instance image (what PersonalizationDataModule gives)."""

    def __init__(self) -> None:
        pixels = np.zeros((48, 40, 3), dtype=np.uint8)
        pixels[8:40, 8:32] = (200, 60, 30)  # a subject on a dark background
        self.image = Image.fromarray(pixels)

    def reference_images(self, concept_index: int = 0) -> list[Image.Image]:
        return [self.image]


def test_noisy_latent_source_reads_one_conditional_unet_call(
    custom_diffusion: CustomDiffusion,
) -> None:
    callback = AttentionMaps(prompts={"a {} on the beach": "beach"}, source="noisy_latent")
    trainer = SimpleNamespace(loggers=[], datamodule=_Data())
    calls = []
    hook = custom_diffusion.unet.register_forward_pre_hook(lambda m, a: calls.append(a[0].shape))
    try:
        with torch.no_grad():
            measured = callback.measure(trainer, custom_diffusion, step=0)
    finally:
        hook.remove()
    assert len(calls) == 1 and calls[0][0] == 1  # one UNet call, the conditional row only
    # Independently: the same noisy latent (instance image, seed 0, middle timestep), by hand.
    prompt = "a <v1> toy on the beach"
    size = custom_diffusion.unet.config.sample_size * custom_diffusion.vae_scale_factor
    image = ImageOps.fit(trainer.datamodule.image, (size, size), Image.Resampling.BICUBIC)
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)[None]
    scheduler = custom_diffusion.noise_scheduler
    step = torch.tensor([scheduler.config.num_train_timesteps // 2])
    with torch.no_grad():
        latent = custom_diffusion.vae.encode(2 * pixels - 1).latent_dist.mean
        latent = latent * custom_diffusion.vae.config.scaling_factor
        noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(0))
        noisy = scheduler.add_noise(latent, noise, step)
        encoding = custom_diffusion.encode_text([prompt])
        with AttentionCapture(custom_diffusion.unet, resolution=16) as capture:
            custom_diffusion.predict_noise(noisy, step, encoding.conditioning)
    maps = capture.maps[0].double()
    assert torch.allclose(maps.sum(dim=0), torch.ones(16, 16, dtype=torch.float64), atol=1e-5)
    ids = encoding.input_ids[0].tolist()
    tokenizer = custom_diffusion.tokenizer
    toy = maps[ids.index(tokenizer.convert_tokens_to_ids("toy</w>"))].numpy()
    beach = maps[ids.index(tokenizer.convert_tokens_to_ids("beach</w>"))].numpy()
    concept = maps[ids.index(tokenizer.convert_tokens_to_ids("<v1>"))].numpy()
    assert measured["attn/class_activation"] == pytest.approx(toy.mean(), rel=1e-5)
    p, q = concept.ravel() / concept.sum(), beach.ravel() / beach.sum()
    skl = 0.5 * np.sum(p * np.log(p / q)) + 0.5 * np.sum(q * np.log(q / p))
    assert measured["attn/skl"] == pytest.approx(skl, rel=1e-4)
    assert set(callback.last_images) == {"attn/<v1>", "attn/toy", "attn/beach", "attn/grid"}
    assert callback.last_images["attn/<v1>"].shape == (3, 132, 132)
    # Measuring again reuses the cached latent and gives the same numbers.
    with torch.no_grad():
        assert callback.measure(trainer, custom_diffusion, step=1) == measured


def test_noisy_latent_source_without_instance_images(custom_diffusion: CustomDiffusion) -> None:
    callback = AttentionMaps(prompts={"a {} on the beach": "beach"}, source="noisy_latent")
    with torch.no_grad():
        measured = callback.measure(NO_LOGGERS, custom_diffusion, step=0)
    assert set(measured) == {"attn/class_activation", "attn/skl"}
    assert all(np.isfinite(value) for value in measured.values())
    assert callback.last_images["attn/grid"].ndim == 3


def test_bad_source_fails_when_the_callback_is_built() -> None:
    with pytest.raises(ValueError, match="source"):
        AttentionMaps(source="latent")  # type: ignore[arg-type]
