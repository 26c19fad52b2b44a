"""Prior preservation in the base module: one UNet call, the prior loss on the class half only."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from helpers import CLASS_PROMPT as PROMPT
from helpers import tiny_datamodule, write_class_folder

from datamodules.extras.class_images import ClassImageOptions
from losses.base import Regularizer
from models import DreamBooth, TextualInversion
from step.prior import PRIOR_BATCH_KEYS, PRIOR_REQUESTER
from step.record import StepRecord


class SeesTheRecord(Regularizer):
    """Keeps what a regularizer is handed, and returns 0."""

    name = "probe"
    records: ClassVar[list[StepRecord]] = []

    def forward(self, record: StepRecord, module: Any) -> torch.Tensor:
        SeesTheRecord.records.append(record)
        return record.model_pred.sum() * 0


def sd_alphas_cumprod() -> torch.Tensor:
    """SD 1.5's schedule written out: scaled-linear betas 0.00085..0.012 over 1000 steps."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, dim=0)


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per sample: mean of (pred - target)^2 over the valid latent cells; then the batch mean."""
    values = []
    for p, t, m in zip(pred, target, mask):
        valid = m[0].bool()
        values.append(((p - t) ** 2)[:, valid].mean())
    return torch.stack(values).mean()


@pytest.fixture()
def prior_batch(tmp_path: Path) -> tuple[Any, dict[str, Any]]:
    folder = write_class_folder(tmp_path / "cls", count=3)
    datamodule = tiny_datamodule(
        class_images=ClassImageOptions(folder=str(folder), prompt=PROMPT, count=3),
        rescale_augmentation=True,  # instance loss masks, so the halves' masks differ
    )  # fmt: skip
    datamodule.request(PRIOR_BATCH_KEYS, PRIOR_REQUESTER)
    return datamodule, next(iter(datamodule.train_dataloader()))


def test_requirements_name_prior_preservation_only_when_on() -> None:
    concepts = tiny_datamodule().concepts
    assert PRIOR_REQUESTER not in TextualInversion(concepts=concepts).batch_requirements()
    module = TextualInversion(concepts=concepts, prior_loss_weight=0.5)
    assert module.batch_requirements()[PRIOR_REQUESTER] == {"class_pixel_values", "class_prompts"}
    with pytest.raises(ValueError, match="prior_loss_weight must be >= 0"):
        TextualInversion(concepts=concepts, prior_loss_weight=-1.0)


def test_prior_loss_is_the_mse_of_the_class_half_of_one_unet_call(
    prior_batch: tuple[Any, dict[str, Any]],
) -> None:
    datamodule, batch = prior_batch
    SeesTheRecord.records.clear()
    module = TextualInversion(
        concepts=datamodule.concepts, prior_loss_weight=0.25, regularizers=[SeesTheRecord(0.0)]
    )
    calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def spy(unet: Any, args: tuple, kwargs: dict, output: Any) -> None:
        calls.append((args[0], args[1], kwargs["encoder_hidden_states"], output.sample))

    handle = module.unet.register_forward_hook(spy, with_kwargs=True)
    losses = module.compute_losses(batch, module.sample_draws(batch, 5))
    handle.remove()

    assert len(calls) == 1  # instance and class samples share one UNet call
    noisy, timesteps, states, pred = calls[0]
    n = len(batch["prompts"])
    assert noisy.shape[0] == 2 * n
    with torch.no_grad():
        assert torch.allclose(states[:n], module.encode_text(batch["prompts"]).hidden_states)
        assert torch.allclose(states[n:], module.encode_text(batch["class_prompts"]).hidden_states)

    # The regularizer saw the instance half; the class half rides along as record.prior.
    record = SeesTheRecord.records[-1]
    assert record.model_pred.shape[0] == n and record.prior is not None
    prior = record.prior
    assert torch.equal(prior.model_pred, pred[n:]) and torch.equal(record.model_pred, pred[:n])
    assert prior.batch["prompts"] == batch["class_prompts"]

    # The class half's noisy latents follow the DDPM forward process with its own noise.
    abar = sd_alphas_cumprod()[prior.timesteps].float()[:, None, None, None]
    expected_noisy = abar.sqrt() * prior.latents + (1 - abar).sqrt() * prior.noise
    assert torch.allclose(noisy[n:], expected_noisy, atol=1e-5)
    assert not torch.allclose(prior.latents, record.latents)  # not the instance images

    # The losses, by hand: instance MSE over its valid cells, class MSE over all of its cells.
    instance_mask = (-torch.nn.functional.max_pool2d(-batch["loss_mask"], 2) > 0.5).float()
    assert instance_mask.shape == (n, 1, 16, 16) and instance_mask.min() == 0  # rescaled images
    expected_denoise = masked_mse(pred[:n], record.noise, instance_mask)
    expected_prior = masked_mse(pred[n:], prior.noise, torch.ones_like(instance_mask))
    parts = losses["parts"]
    assert torch.allclose(parts["denoise"], expected_denoise, rtol=1e-5)
    assert torch.allclose(parts["prior"], expected_prior, rtol=1e-5)
    assert torch.allclose(losses["total"], expected_denoise + 0.25 * expected_prior, rtol=1e-5)
    # ... which differs from a loss over the whole concatenated batch.
    whole = ((pred - torch.cat([record.noise, prior.noise])) ** 2).mean()
    assert not torch.allclose(parts["prior"], whole)


def test_prior_weight_without_class_data_is_a_clear_error() -> None:
    datamodule = tiny_datamodule()
    module = DreamBooth(concepts=datamodule.concepts, prior_loss_weight=1.0)
    batch = next(iter(datamodule.train_dataloader()))
    with pytest.raises(KeyError, match="no class images"):
        module.compute_losses(batch, module.sample_draws(batch, 0))


def test_class_latents_are_cached_by_class_image(prior_batch: tuple[Any, dict[str, Any]]) -> None:
    datamodule, batch = prior_batch
    module = TextualInversion(concepts=datamodule.concepts, prior_loss_weight=1.0)
    module.compute_losses(batch, module.sample_draws(batch, 0))
    class_keys = {k for k in module._latent_cache if k.startswith("class/")}
    assert class_keys == set(batch["class_cache_key"])
