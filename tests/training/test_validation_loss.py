"""The validation loss: ``validation_split`` holds photos out of training and validates on
them; the loss is the plain MSE at the fixed timestep set, the mean of its per-timestep logs,
the same on every call and whatever the run's seed (so runs compare); bad splits are one line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import optimizer_with_lr, tiny_trainer, write_photos_and_masks

from datamodules.personalization import PersonalizationDataModule
from models import TextualInversion

FRACTIONS = (0.1, 0.5, 0.9)


def photos_datamodule(root: Path, held_out: int) -> PersonalizationDataModule:
    photos, _ = write_photos_and_masks(root, count=4)
    return PersonalizationDataModule(
        instance_data_dir=str(photos), class_word="robot", resolution=32, repeats=3,
        batch_size=2, validation_split=held_out,
    )  # fmt: skip


def test_held_out_photos_never_train_and_are_what_validation_sees(tmp_path: Path) -> None:
    data = photos_datamodule(tmp_path, held_out=1)
    train, val = data.train_dataloader().dataset, data.val_dataloader().dataset
    assert {i for _, i in train.items} == {0, 1, 2} and {i for _, i in val.items} == {3}
    # the samples are those photos: validation's are the held-out photo itself, unaugmented
    held_out = data.images[0][3].resize((43, 32)).crop((5, 0, 37, 32))
    expected = torch.tensor(list(held_out.getdata()), dtype=torch.float32).T.reshape(3, 32, 32)
    shown = (val[0]["pixel_values"] + 1) / 2 * 255
    assert (shown - expected).abs().mean() < 8


def validate(module: TextualInversion, data: PersonalizationDataModule, root: Path) -> dict:
    trainer = tiny_trainer(root, max_steps=1, limit_val_batches=1.0)
    trainer.validate(module, datamodule=data, verbose=False)
    return {k: float(v) for k, v in trainer.callback_metrics.items()}


@pytest.mark.smoke  # the newest allowed versions too
def test_the_loss_is_the_mean_over_fixed_timesteps_and_ignores_the_runs_seed(
    tmp_path: Path,
) -> None:
    data = photos_datamodule(tmp_path / "data", held_out=2)
    options = {"concepts": data.concepts, "validation_timesteps": FRACTIONS,
               "optimizer": optimizer_with_lr(1e-2)}  # fmt: skip
    first = validate(TextualInversion(seed=0, **options), data, tmp_path / "a")
    steps = [f"val/loss/t{round(f * 1000)}" for f in FRACTIONS]
    assert set(steps) <= set(first) and "val/loss" in first
    assert first["val/loss"] == pytest.approx(sum(first[s] for s in steps) / len(steps))
    assert first["val/loss/t100"] != first["val/loss/t900"]
    again = validate(TextualInversion(seed=0, **options), data, tmp_path / "b")
    other_seed = validate(TextualInversion(seed=7, **options), data, tmp_path / "c")
    assert again == first == other_seed


def test_training_logs_the_validation_loss_every_n_steps(tmp_path: Path) -> None:
    data = photos_datamodule(tmp_path / "data", held_out=1)
    module = TextualInversion(concepts=data.concepts, optimizer=optimizer_with_lr(5e-2))
    before = validate(module, data, tmp_path / "before")["val/loss"]
    trainer = tiny_trainer(
        tmp_path / "run", max_steps=4, limit_val_batches=1.0, val_check_interval=2,
        check_val_every_n_epoch=None,
    )  # fmt: skip
    trainer.fit(module, datamodule=data)
    after = float(trainer.callback_metrics["val/loss"])
    assert torch.isfinite(torch.tensor(after)) and after != before


@pytest.mark.parametrize(("held_out", "message"), [(4, "at least one must stay"), (-1, ">= 0")])
def test_a_split_that_leaves_nothing_to_train_is_refused(
    tmp_path: Path, held_out: int, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        photos_datamodule(tmp_path, held_out)
