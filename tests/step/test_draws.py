"""Draws keyed by the sample: the same sample gets the same noise in any batch, on any rank."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from helpers import CLASS_PROMPT, optimizer_with_lr, tiny_datamodule, write_class_folder

from datamodules.extras.class_images import ClassImageOptions
from models import CustomDiffusion
from step.draws import INSTANCE_SALT, PRIOR_SALT, SampleDraws
from step.prior import PRIOR_BATCH_KEYS, PRIOR_REQUESTER


def test_a_samples_draws_do_not_depend_on_its_batch() -> None:
    alone = SampleDraws(0, [7], INSTANCE_SALT, "cpu")
    together = SampleDraws(0, [3, 7, 11], INSTANCE_SALT, "cpu")
    assert torch.equal(alone.randn((2, 3))[0], together.randn((2, 3))[1])
    assert torch.equal(alone.randint(1000)[0], together.randint(1000)[1])
    # Other keys, salts and seeds are other streams.
    first = SampleDraws(0, [7], INSTANCE_SALT, "cpu").randn((16,))
    for other in (
        SampleDraws(0, [8], INSTANCE_SALT, "cpu"),
        SampleDraws(0, [7], PRIOR_SALT, "cpu"),
        SampleDraws(1, [7], INSTANCE_SALT, "cpu"),
    ):
        assert not torch.equal(first, other.randn((16,)))
    joined = SampleDraws(0, [7], INSTANCE_SALT, "cpu") + SampleDraws(0, [7], PRIOR_SALT, "cpu")
    assert joined.keys == [7, 7] and not torch.equal(*joined.randn((16,)))


def test_training_batches_carry_their_stream_position() -> None:
    datamodule = tiny_datamodule()  # 15 samples an epoch
    loader = datamodule.train_dataloader()
    first_epoch = [int(k) for batch in loader for k in batch["sample_key"]]
    assert sorted(first_epoch) == list(range(15))
    loader.sampler.set_epoch(1)
    second_epoch = [int(k) for batch in loader for k in batch["sample_key"]]
    assert sorted(second_epoch) == list(range(15, 30))
    validation = datamodule.val_dataloader()
    validation.sampler.set_epoch(3)  # validation noise stays the same at every validation
    assert [int(k) for b in validation for k in b["sample_key"]] == list(range(5))


def halves(batch: dict[str, Any]) -> list[dict[str, Any]]:
    return [{key: value[i : i + 1] for key, value in batch.items()} for i in range(2)]


def test_a_batch_of_two_has_the_mean_gradient_of_its_halves(tmp_path: Path) -> None:
    """What two DDP ranks at batch 1 average is what one process at batch 2 computes (prior
    preservation on, so the class samples' draws are keyed too)."""
    folder = write_class_folder(tmp_path / "class", count=3)
    datamodule = tiny_datamodule(
        class_images=ClassImageOptions(folder=str(folder), prompt=CLASS_PROMPT, count=3),
        rescale_augmentation=True,
    )  # fmt: skip
    datamodule.request(PRIOR_BATCH_KEYS, PRIOR_REQUESTER)
    module = CustomDiffusion(
        concepts=datamodule.concepts, prior_loss_weight=1.0, optimizer=optimizer_with_lr(1e-3)
    )
    parameters = [p for p in module.parameters() if p.requires_grad]
    batch = next(iter(datamodule.train_dataloader()))

    def gradients(part: dict[str, Any], step: int) -> list[torch.Tensor]:
        for parameter in parameters:
            parameter.grad = None
        module.compute_losses(part, module.sample_draws(part, step))["total"].backward()
        return [parameter.grad.clone() for parameter in parameters]

    whole = gradients(batch, step=4)
    first, second = (gradients(half, step=4) for half in halves(batch))
    mean = [(a + b) / 2 for a, b in zip(first, second)]
    difference = sum(((w - m) ** 2).sum() for w, m in zip(whole, mean)).sqrt()
    size = sum((w**2).sum() for w in whole).sqrt()
    assert size > 0 and difference / size < 1e-5  # float reduction order only
    # The step number does not enter a keyed sample's draws.
    later = gradients(batch, step=9)
    assert all(torch.equal(w, x) for w, x in zip(whole, later))
