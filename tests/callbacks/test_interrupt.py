"""Ctrl-C and SIGTERM mid-run write interrupted.ckpt and an export, and a run resumed from
that checkpoint ends bitwise equal to an uninterrupted one."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import lightning as L
import pytest
from baseline_checks import assert_resumed_matches
from helpers import SignalAt, optimizer_with_lr, tiny_datamodule, tiny_trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

from callbacks.export import ExportWeights
from callbacks.interrupt import CHECKPOINT_NAME, SaveOnInterrupt
from models import TextualInversion


def build() -> tuple[TextualInversion, Any]:
    datamodule = tiny_datamodule()
    module = TextualInversion(concepts=datamodule.concepts, optimizer=optimizer_with_lr(1e-2))
    return module, datamodule


def callbacks(root: Path) -> list[L.Callback]:
    checkpoints = ModelCheckpoint(dirpath=root / "ckpt", every_n_train_steps=100)
    return [checkpoints, ExportWeights(), SaveOnInterrupt()]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_run_keeps_its_work_and_resumes_exactly(
    signum: int, tmp_path: Path
) -> None:
    before = signal.getsignal(signal.SIGINT)
    straight, datamodule = build()
    tiny_trainer(tmp_path / "a", max_steps=5).fit(straight, datamodule=datamodule)

    first, datamodule = build()
    root = tmp_path / "b"
    trainer = tiny_trainer(root, max_steps=5, callbacks=[*callbacks(root), SignalAt(signum, 2)])
    if signum == signal.SIGTERM:
        with pytest.raises(SIGTERMException):
            trainer.fit(first, datamodule=datamodule)
    else:
        trainer.fit(first, datamodule=datamodule)
    assert trainer.global_step == 3  # the step in flight finished, then the run stopped
    checkpoint = root / "ckpt" / CHECKPOINT_NAME
    assert checkpoint.is_file()
    assert (root / "export" / "step-3" / "learned_embeds.safetensors").is_file()
    assert signal.getsignal(signal.SIGINT) is before  # handler restored

    resumed, datamodule = build()
    tiny_trainer(tmp_path / "c", max_steps=5).fit(
        resumed, datamodule=datamodule, ckpt_path=checkpoint
    )
    assert_resumed_matches(straight, first, resumed)


class FailAt(L.Callback):
    """Raises at the start of step ``step``, as a crashing run would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError("crash")


def test_a_crashed_run_gives_ctrl_c_back(tmp_path: Path) -> None:
    before = signal.getsignal(signal.SIGINT)
    module, datamodule = build()
    trainer = tiny_trainer(tmp_path, max_steps=5, callbacks=[SaveOnInterrupt(), FailAt(1)])
    with pytest.raises(RuntimeError, match="crash"):
        trainer.fit(module, datamodule=datamodule)
    assert signal.getsignal(signal.SIGINT) is before


def test_a_handler_left_behind_still_interrupts(tmp_path: Path) -> None:
    """Lightning puts back the handlers it saw when fit began, so a handler left over from an
    earlier run can outlive this one: outside a run it must act as plain Ctrl-C."""
    before = signal.getsignal(signal.SIGINT)
    module, datamodule = build()
    saver = SaveOnInterrupt()
    tiny_trainer(tmp_path, max_steps=1, callbacks=[saver]).fit(module, datamodule=datamodule)
    signal.signal(signal.SIGINT, saver._on_sigint)  # as if restored by a later run's teardown
    try:
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
        assert not saver._stop_requested
    finally:
        signal.signal(signal.SIGINT, before)
