"""One progress bar over the whole run's optimizer steps: step N/max_steps, loss, it/s, ETA.

Lightning's bars count batches per epoch and, for a run bounded by ``max_steps`` (every config
here), show ``Epoch 0/-2``; personalization runs are a few epochs of a handful of photos, so
the number that matters is the step. Every run gets this bar unless ``enable_progress_bar``
is false (train.py adds it).
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar


class StepProgressBar(TQDMProgressBar):
    """TQDM bar over optimizer steps; resumes at the checkpoint's step."""

    def __init__(self, refresh_rate: int = 1) -> None:
        super().__init__(refresh_rate=refresh_rate)

    def total_steps(self, trainer: L.Trainer) -> float:
        """max_steps, else epochs x optimizer steps per epoch (inf when unbounded)."""
        if trainer.max_steps > 0:
            return trainer.max_steps
        batches = trainer.num_training_batches
        epochs = trainer.max_epochs if trainer.max_epochs is not None else -1
        if epochs < 0 or not math.isfinite(batches):
            return math.inf
        return epochs * math.ceil(batches / trainer.accumulate_grad_batches)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.train_progress_bar = self.init_train_tqdm()
        total = self.total_steps(trainer)
        self.train_progress_bar.reset(total=None if math.isinf(total) else total)
        self.train_progress_bar.initial = trainer.global_step  # a resumed run starts there
        self.train_progress_bar.n = trainer.global_step
        self.train_progress_bar.set_description("train")

    def on_train_epoch_start(self, trainer: L.Trainer, *_: Any) -> None:
        self.train_progress_bar.set_description(f"train (epoch {trainer.current_epoch})")

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *_: Any
    ) -> None:
        bar = self.train_progress_bar
        if bar is None or bar.disable:
            return
        step = trainer.global_step
        if step != bar.n and (step % self.refresh_rate == 0 or step == bar.total):
            bar.update(step - bar.n)
            bar.set_postfix(self.get_metrics(trainer, pl_module))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.train_progress_bar.disable:
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        """End the bar's line, so the error printed next starts a line of its own and no
        later redraw of the bar writes over it."""
        bar = self._train_progress_bar  # None when the run failed before training started
        if bar is not None and not bar.disable:
            bar.close()

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        """The progress-bar metrics (the loss) without the logger's version number."""
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return metrics
