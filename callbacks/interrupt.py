"""Ctrl-C and SIGTERM (a cluster's pre-emption) keep the work: a checkpoint and an export.

The first Ctrl-C asks the run to stop at the end of the current step (a second one interrupts
at once, as usual): the step finishes, ``<checkpoints>/interrupted.ckpt`` and
``export/step-<N>`` are written, and training ends. SIGTERM is Lightning's: it stops at the end
of the step with a ``SIGTERMException``, and this callback writes the same two before the run
exits. Both points are step boundaries, so resuming from ``interrupted.ckpt`` continues exactly
(``fit --ckpt_path <checkpoints>/interrupted.ckpt``). ``stopped_by`` keeps the signal, so the
command line exits with its conventional code (130, 143) instead of calling the run a success.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

from callbacks.export import ExportWeights

CHECKPOINT_NAME = "interrupted.ckpt"


class SaveOnInterrupt(L.Callback):
    """Writes ``interrupted.ckpt`` and an export when a run is stopped by Ctrl-C or SIGTERM."""

    def __init__(self) -> None:
        self._stop_requested = False
        self._previous_handler: Any = None
        self._active = False  # between on_train_start and the run's end
        self.stopped_by: signal.Signals | None = None  # the signal that stopped the last run

    def checkpoint_path(self, trainer: L.Trainer) -> Path:
        """Beside the run's other checkpoints (its ModelCheckpoint's folder when it has one)."""
        callback = next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)), None)
        if callback is not None and callback.dirpath:
            return Path(callback.dirpath) / CHECKPOINT_NAME
        return Path(trainer.log_dir or trainer.default_root_dir) / "checkpoints" / CHECKPOINT_NAME

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stop_requested, self.stopped_by = False, None
        self._active = True
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGINT, self._on_sigint)
            owner = getattr(previous, "__self__", None)
            if isinstance(owner, SaveOnInterrupt):  # a run that died before restoring its own
                previous = owner._previous_handler
            self._previous_handler = previous

    def _on_sigint(self, signum: int, frame: Any) -> None:
        previous = self._previous_handler or signal.default_int_handler
        signal.signal(signal.SIGINT, previous)
        if not self._active:  # left installed after its run (Lightning restores what it saw)
            if callable(previous):
                previous(signum, frame)
            return
        self._stop_requested = True
        print("\nCtrl-C: stopping after this step, with a checkpoint and an export "
              "(press Ctrl-C again to interrupt at once).", flush=True)  # fmt: skip

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        requested = self._stop_requested
        if trainer.world_size > 1:  # every rank stops at the same step
            requested = trainer.strategy.reduce_boolean_decision(requested, all=False)
        if requested:
            self._save(trainer, signal.SIGINT)
            trainer.should_stop = True

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if isinstance(exception, SIGTERMException):
            self._save(trainer, signal.SIGTERM)
        self._restore_handler()  # Lightning skips the teardown hooks when fit raises

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore_handler()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._restore_handler()

    def _restore_handler(self) -> None:
        self._active = False
        if self._previous_handler is not None and (
            threading.current_thread() is threading.main_thread()
        ):
            signal.signal(signal.SIGINT, self._previous_handler)

    def _save(self, trainer: L.Trainer, why: signal.Signals) -> None:
        self.stopped_by = why
        path = self.checkpoint_path(trainer)
        trainer.save_checkpoint(path)  # every rank: a collective under DDP
        for callback in trainer.callbacks:
            if isinstance(callback, ExportWeights):
                callback.place_pending()  # the checkpoint is on disk: its export goes in place
        rank_zero_info(
            f"{'Ctrl-C' if why == signal.SIGINT else why.name} at step {trainer.global_step}: "
            f"wrote {path} and its export; resume with "
            f"`python train.py fit --config <run>/config.yaml --ckpt_path {path}`."
        )
