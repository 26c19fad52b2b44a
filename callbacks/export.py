"""Write the learned weights in diffusers' formats into ``<log_dir>/export/``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L

from models.base import PersonalizationModule


class ExportWeights(L.Callback):
    """At the end of training into ``export/``; with each checkpoint into
    ``export/step-<N>/``. Rank zero only, so DDP writes one set."""

    def __init__(self, dirname: str = "export", with_checkpoints: bool = True) -> None:
        self.dirname = dirname
        self.with_checkpoints = with_checkpoints

    def export_dir(self, trainer: L.Trainer) -> Path:
        return Path(trainer.log_dir or trainer.default_root_dir) / self.dirname

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._export(trainer, pl_module, self.export_dir(trainer))

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if self.with_checkpoints:
            step_dir = self.export_dir(trainer) / f"step-{trainer.global_step}"
            self._export(trainer, pl_module, step_dir)

    @staticmethod
    def _export(trainer: L.Trainer, pl_module: L.LightningModule, folder: Path) -> None:
        if not trainer.is_global_zero:
            return
        # Any module with export(folder) (a baseline, or the contextualizer's pretraining).
        if not isinstance(pl_module, PersonalizationModule) and not callable(
            getattr(pl_module, "export", None)
        ):
            raise TypeError("ExportWeights needs a module with an export(folder) method.")
        pl_module.export(folder)
