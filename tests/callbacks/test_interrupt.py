"""Ctrl-C and SIGTERM mid-run write interrupted.ckpt and an export, and a run resumed from
that checkpoint ends bitwise equal to an uninterrupted one."""

from __future__ import annotations

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
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored

    resumed, datamodule = build()
    tiny_trainer(tmp_path / "c", max_steps=5).fit(
        resumed, datamodule=datamodule, ckpt_path=checkpoint
    )
    assert_resumed_matches(straight, first, resumed)
