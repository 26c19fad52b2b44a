"""Checks every baseline must pass: only its own weights train, and a resume is exact."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from helpers import snapshot, tiny_trainer, trainable_state

from datamodules.personalization import PersonalizationDataModule
from models.base import PersonalizationModule

Build = Callable[[], tuple[PersonalizationModule, PersonalizationDataModule]]


def assert_only_trainable_changed(
    module: PersonalizationModule, datamodule: PersonalizationDataModule, root: Path, steps: int = 3
) -> dict[str, torch.Tensor]:
    """Fit a few steps: every trainable tensor moved, every other one is bitwise the same.

    Returns the state before training, for baseline-specific checks.
    """
    trained = module.trainable_state_keys()
    before = snapshot(module)
    tiny_trainer(root, max_steps=steps).fit(module, datamodule=datamodule)
    after = module.state_dict()
    assert set(after) == set(before)
    for key, value in before.items():
        if key in trained:
            assert not torch.equal(after[key], value), f"{key} should have trained"
        else:
            assert torch.equal(after[key], value), f"frozen {key} changed"
    return before


def assert_resume_is_exact(build: Build, root: Path, total_steps: int = 6) -> None:
    """``total_steps`` straight steps == 3 steps, a checkpoint, and the rest from it (with the
    tiny DataModule's 8 batches an epoch the checkpoint is mid-epoch; with 3, at its end)."""
    straight, datamodule = build()
    straight_trainer = tiny_trainer(root / "a", max_steps=total_steps)
    straight_trainer.fit(straight, datamodule=datamodule)

    first, datamodule = build()
    tiny_trainer(root / "b", max_steps=3, checkpoint=True).fit(first, datamodule=datamodule)
    checkpoint = root / "b" / "ckpt" / "epoch=0-step=3.ckpt"
    assert checkpoint.exists()
    stored = torch.load(checkpoint, weights_only=True)["state_dict"]
    assert set(stored) == first.trainable_state_keys()  # only what trains is saved

    resumed, datamodule = build()
    trainer = tiny_trainer(root / "c", max_steps=total_steps)
    trainer.fit(resumed, datamodule=datamodule, ckpt_path=checkpoint)
    assert trainer.global_step == total_steps
    assert trainer.current_epoch == straight_trainer.current_epoch  # no epoch skipped
    assert_resumed_matches(straight, first, resumed)


def assert_resumed_matches(
    straight: PersonalizationModule, first: PersonalizationModule, resumed: PersonalizationModule
) -> None:
    """The resumed run's trained weights equal the straight run's, bitwise, and differ from the
    checkpoint's (so the comparison has teeth)."""
    expected, actual = trainable_state(straight), trainable_state(resumed)
    assert expected.keys() == actual.keys() and expected
    for key in expected:
        assert torch.equal(expected[key], actual[key]), f"{key} differs after resume"
    at_checkpoint = trainable_state(first)
    assert any(not torch.equal(at_checkpoint[k], actual[k]) for k in actual)


def assert_trained_stay_fp32_under_bf16(
    module: PersonalizationModule, datamodule: PersonalizationDataModule, root: Path, steps: int = 2
) -> list[torch.nn.Parameter]:
    """Fit under bf16-mixed: the trained weights stay fp32 and finite; returns them."""
    tiny_trainer(root, max_steps=steps, precision="bf16-mixed").fit(module, datamodule=datamodule)
    trained = [p for p in module.parameters() if p.requires_grad]
    assert trained and {p.dtype for p in trained} == {torch.float32}
    assert all(bool(torch.isfinite(p).all()) for p in trained)
    return trained
