"""models/base.py on the tiny pipeline, with Textual Inversion as the thinnest baseline.

The step is rebuilt here from its parts (a fresh VAE encode scaled by the VAE's factor, DDPM's
forward process from the scheduler's betas in float64, one UNet call, a masked MSE written
out), not from the module's own helpers. The sample's random draws come from the same
`SampleDraws` streams in the step's order (latent sample, noise, noise offset, timestep): that
order is what makes a resumed or multi-process run draw the same noise, so it is part of the
contract. Prior preservation and the end-to-end runs are tested in test_prior_preservation.py
and test_training.py; this file tests the step and the checks.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from diffusers import DDPMScheduler
from helpers import tiny_datamodule

from core.concept import ConceptSpec
from losses.base import Regularizer
from models import TextualInversion
from models.base import PersonalizationModule
from step.prior import PRIOR_BATCH_KEYS, PRIOR_REQUESTER
from step.record import StepRecord

CONCEPTS = [ConceptSpec("<v1>", "toy")]
LATENT = (4, 16, 16)  # tiny-sd latents of a 32 px image
STEP = 2


# ----- helpers --------------------------------------------------------------------------------
def first_batch(**data: Any) -> dict[str, Any]:
    return next(iter(tiny_datamodule(**data).train_dataloader()))


def count_unet_calls(module: TextualInversion) -> list[int]:
    """Batch size of every UNet forward from now on."""
    calls: list[int] = []
    module.unet.register_forward_hook(lambda _m, args, _o: calls.append(len(args[0])))
    return calls


def fresh_vae_latents(
    module: TextualInversion, pixels: torch.Tensor, z: torch.Tensor
) -> torch.Tensor:
    """mean + std * z of each image's own VAE encode, times the VAE's scaling factor."""
    rows = []
    with torch.no_grad():
        for image, draw in zip(pixels, z):
            dist = module.vae.encode(image[None]).latent_dist
            rows.append(dist.mean[0] + dist.std[0] * draw)
    return torch.stack(rows) * module.vae.config.scaling_factor


def alphabar_at(module: TextualInversion, timesteps: torch.Tensor) -> torch.Tensor:
    """prod_{s <= t} (1 - beta_s) in float64 from the scheduler's betas, as (B, 1, 1, 1)."""
    betas = module.noise_scheduler.betas.double()
    values = [math.prod(1.0 - float(b) for b in betas[: int(t) + 1]) for t in timesteps]
    return torch.tensor(values).view(-1, 1, 1, 1)


def block_min_mask(pixel_mask: torch.Tensor, factor: int) -> torch.Tensor:
    """A latent cell is valid only if every pixel of its factor x factor block is."""
    b, _, h, w = pixel_mask.shape
    blocks = pixel_mask.float().view(b, 1, h // factor, factor, w // factor, factor)
    return blocks.amin(dim=(3, 5))


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Each sample's mean squared error over its valid cells (all channels), then the mean."""
    per_sample = []
    for p, t, m in zip(pred.double(), target.double(), mask):
        valid = m[0].bool()
        per_sample.append(((p - t) ** 2)[:, valid].mean())
    return torch.stack(per_sample).mean()


class FakeDataModule:
    """What ``attach_datamodule`` reads: a resolution, and ``request`` (recorded)."""

    def __init__(self, resolution: int) -> None:
        self.resolution = resolution
        self.requests: dict[str, frozenset[str]] = {}

    def request(self, keys: frozenset[str], who: str) -> None:
        self.requests[who] = frozenset(keys)


class Constant(Regularizer):
    """A regularizer whose unweighted value is 2, to see how the total weighs it."""

    name = "constant"

    def forward(self, record: StepRecord, module: Any) -> torch.Tensor:
        return record.model_pred.sum() * 0 + 2.0


# ----- the denoising step -----------------------------------------------------------------
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_step_record_is_ddpms_forward_process_and_one_unet_call(prediction: str) -> None:
    """Rescaled images (so loss masks have holes and no latent cache): latents, noisy latents,
    target, prediction, latent mask and loss against their definitions."""
    batch = first_batch(rescale_augmentation=True)
    module = TextualInversion(concepts=CONCEPTS, seed=3)
    if prediction == "v_prediction":
        config = module.noise_scheduler.config
        module.noise_scheduler = DDPMScheduler.from_config(config, prediction_type=prediction)
    calls = count_unet_calls(module)
    record = module.denoise(batch, module.sample_draws(batch, STEP))
    assert calls == [2]

    draws = module.sample_draws(batch, STEP)  # the same streams again, in the step's order
    z, noise, timesteps = draws.randn(LATENT), draws.randn(LATENT), draws.randint(1000)
    latents = fresh_vae_latents(module, batch["pixel_values"], z)
    abar = alphabar_at(module, timesteps)
    noisy = abar.sqrt() * latents.double() + (1 - abar).sqrt() * noise.double()
    if prediction == "epsilon":
        target = noise.double()
    else:  # v = sqrt(abar) eps - sqrt(1 - abar) x0 (Salimans & Ho 2022)
        target = abar.sqrt() * noise.double() - (1 - abar).sqrt() * latents.double()
        assert (target - noise).abs().max() > 0.1
    assert torch.equal(record.timesteps, timesteps) and torch.equal(record.noise, noise)
    assert torch.allclose(record.latents, latents, atol=1e-5)
    assert torch.allclose(record.noisy_latents.double(), noisy, atol=1e-5)
    assert torch.allclose(record.target.double(), target, atol=1e-5)

    with torch.no_grad():
        states = module.encode_text(batch["prompts"]).hidden_states
        pred = module.unet(noisy.float(), timesteps, encoder_hidden_states=states).sample
    assert torch.allclose(record.model_pred, pred, atol=1e-4)

    mask = block_min_mask(batch["loss_mask"], factor=2)
    assert mask.min() == 0 and torch.equal(record.loss_mask, mask)
    want = masked_mse(record.model_pred.detach(), target, mask)
    assert float(module.denoising_loss(record).detach()) == pytest.approx(float(want), rel=1e-5)


def test_batch_without_a_loss_mask_counts_every_latent_cell() -> None:
    batch = first_batch()
    del batch["loss_mask"]
    module = TextualInversion(concepts=CONCEPTS)
    record = module.denoise(batch, module.sample_draws(batch, STEP))
    assert torch.equal(record.loss_mask, torch.ones(2, 1, 16, 16))


def test_noise_offset_adds_one_normal_draw_per_sample_and_channel() -> None:
    """noise + offset * n_c (Guttenberg's offset noise): spatially constant per channel, linear
    in the strength, and 0 turns it off (the plain noise, untouched)."""
    batch = first_batch()
    module = TextualInversion(concepts=CONCEPTS)
    noises = {}
    for strength in (0.0, 0.1, 0.3):
        module.noise_offset = strength
        noises[strength] = module.denoise(batch, module.sample_draws(batch, STEP)).noise
    draws = module.sample_draws(batch, STEP)
    _, plain, offset = draws.randn(LATENT), draws.randn(LATENT), draws.randn(LATENT[:1])
    assert torch.equal(noises[0.0], plain)
    assert torch.allclose(noises[0.1], plain + 0.1 * offset[..., None, None], atol=1e-6)
    shift = noises[0.3] - plain
    assert torch.allclose(shift, 3 * (noises[0.1] - plain), atol=1e-6)
    assert shift.abs().min() > 0


def test_total_is_denoise_plus_each_weighted_regularizer() -> None:
    batch = first_batch()
    module = TextualInversion(concepts=CONCEPTS, regularizers=[Constant(weight=0.25)])
    losses = module.compute_losses(batch, module.sample_draws(batch, STEP))
    parts = {name: part.detach() for name, part in losses["parts"].items()}
    assert set(parts) == {"denoise", "constant"} and float(parts["constant"]) == 2.0
    assert float(losses["total"].detach()) == pytest.approx(float(parts["denoise"]) + 0.5, rel=1e-6)


def test_hand_built_batches_get_distinct_draws_by_step_and_position() -> None:
    """Without sample keys, keys come from (step, rank, position): negative, so never a
    stream position, and different at another step or position."""
    module = TextualInversion(concepts=CONCEPTS)
    batch = {"prompts": ["a <v1> toy"] * 3}
    first, again, later = (module.sample_draws(batch, s) for s in (0, 0, 1))
    assert all(key < 0 for key in first.keys + later.keys)
    assert len(set(first.keys)) == 3 and not set(first.keys) & set(later.keys)
    assert torch.equal(first.randn((5,)), again.randn((5,)))


# ----- the latent cache -------------------------------------------------------------------
def test_latent_cache_holds_each_images_fresh_vae_distribution() -> None:
    """Cached (mean, std) are those of a one-image encode, whatever batch the image came in,
    and sampling from them gives what an uncached encode with the same draws gives."""
    batch = first_batch()
    pixels, keys = batch["pixel_values"], batch["cache_key"]
    module = TextualInversion(concepts=CONCEPTS)
    cached = module.encode_latents(pixels, keys, module.sample_draws(batch, STEP))
    with torch.no_grad():
        for image, key in zip(pixels, keys):
            dist = module.vae.encode(image[None]).latent_dist
            assert torch.equal(module._latent_cache[key][0], dist.mean[0])
            assert torch.equal(module._latent_cache[key][1], dist.std[0])

    reversed_order = TextualInversion(concepts=CONCEPTS)
    reversed_order.encode_latents(pixels.flip(0), keys[::-1], module.sample_draws(batch, STEP))
    for key in keys:
        assert all(map(torch.equal, reversed_order._latent_cache[key], module._latent_cache[key]))

    uncached = TextualInversion(concepts=CONCEPTS, cache_latents=False)
    fresh = uncached.encode_latents(pixels, keys, uncached.sample_draws(batch, STEP))
    assert not uncached._latent_cache and torch.allclose(fresh, cached, atol=1e-5)


def test_a_batch_with_a_random_crop_is_encoded_afresh() -> None:
    """An empty key (a randomly augmented image) turns the cache off for the batch."""
    batch = first_batch()
    module = TextualInversion(concepts=CONCEPTS)
    keys = [batch["cache_key"][0], ""]
    first = module.encode_latents(batch["pixel_values"], keys, module.sample_draws(batch, 0))
    dark = torch.zeros_like(batch["pixel_values"])
    second = module.encode_latents(dark, keys, module.sample_draws(batch, 0))
    assert not module._latent_cache and (first - second).abs().max() > 0.1


# ----- construction and set-up checks -------------------------------------------------------
def test_pretrained_components_are_frozen_and_stay_in_eval_mode() -> None:
    """Only the concept vectors train (in the base, not even they with train_tokens=False)."""
    module = TextualInversion(concepts=CONCEPTS)
    trainable = [p for p in module.parameters() if p.requires_grad]
    assert len(trainable) == 1 and trainable[0] is module.concept_tokens.embedding.vectors
    assert not any(p.requires_grad for p in module.unet.parameters())
    assert not any(p.requires_grad for p in module.vae.parameters())
    module.train()
    assert not (module.unet.training or module.vae.training or module.text_encoder.training)
    frozen = PersonalizationModule(concepts=CONCEPTS, train_tokens=False)
    assert not any(p.requires_grad for p in frozen.parameters())
    assert frozen.trainable_groups() == {}


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"concepts": None}, "No concepts given"),
        ({"concepts": []}, "No concepts given"),
        ({"noise_offset": float("nan")}, "noise_offset must be finite and >= 0"),
        ({"noise_offset": float("inf")}, "noise_offset must be finite and >= 0"),
        ({"noise_offset": -0.1}, "noise_offset must be finite and >= 0"),
        ({"lr_warmup_steps": -1}, "lr_warmup_steps must be >= 0"),
        ({"prior_loss_weight": -0.5}, "prior_loss_weight must be >= 0"),
    ],
)
def test_invalid_arguments_are_refused_by_name(arguments: dict[str, Any], message: str) -> None:
    settings = {"concepts": CONCEPTS, **arguments}
    with pytest.raises(ValueError, match=message):
        TextualInversion(**settings)


@pytest.mark.parametrize(("resolution", "suggestion"), [(33, 32), (47, 46), (1, 2)])
def test_resolution_off_the_vae_factor_is_refused_naming_it(
    resolution: int, suggestion: int
) -> None:
    module = TextualInversion(concepts=CONCEPTS)
    datamodule = FakeDataModule(resolution)
    expected = (
        f"resolution {resolution} is not a multiple of 2, the VAE's downsampling factor of "
        f"'tiny-sd'; use e.g. {suggestion}."
    )
    with pytest.raises(ValueError, match=expected):
        module.attach_datamodule(datamodule)
    assert not datamodule.requests  # refused before asking for anything


def test_prior_data_is_requested_for_fit_only() -> None:
    """Only training steps run the class half, so validate / test leave the class images."""
    module = TextualInversion(concepts=CONCEPTS, prior_loss_weight=0.5)
    for stage, wanted in (("fit", {PRIOR_REQUESTER: PRIOR_BATCH_KEYS}), ("validate", {})):
        datamodule = FakeDataModule(32)
        module.attach_datamodule(datamodule, stage)
        assert datamodule.requests == wanted, stage
