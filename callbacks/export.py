"""Write the learned weights in diffusers' formats into ``<log_dir>/export/``.

Every export folder (``export/`` and each ``export/step-<N>/``) carries ``export.json``, its
manifest (exports/manifest.py): the module's export and the manifest are written together
(`export_with_manifest`). Each export is written whole into a staging folder first, so a
failure midway leaves the previous files as they were: ``step-<N>`` folders are swapped in
whole (core/atomic.py), the final export's files renamed in one by one beside them, its
``export.json`` taken out first and put in last, so a folder with one is complete.
``export/step-<N>`` is written with the weights of checkpoint N, but put in place only after
that checkpoint's file is on disk (the checkpoint callback writes it right after this hook): at
the next batch, or at the end.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import lightning as L

from core.atomic import swap_in
from exports.manifest import MANIFEST
from models.base import PersonalizationModule
from models.exports_loading import export_with_manifest


class ExportWeights(L.Callback):
    """At the end of training into ``export/``; with each checkpoint into
    ``export/step-<N>/``. Rank zero only, so DDP writes one set."""

    def __init__(self, dirname: str = "export", with_checkpoints: bool = True) -> None:
        self.dirname = dirname
        self.with_checkpoints = with_checkpoints
        self._pending: list[tuple[Path, Path]] = []  # (staged folder, where it goes)

    def export_dir(self, trainer: L.Trainer) -> Path:
        return Path(trainer.log_dir or trainer.default_root_dir) / self.dirname

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.place_pending()
        final = self.export_dir(trainer)  # on every rank: log_dir is a collective under DDP
        if not trainer.is_global_zero:
            return
        staging = final / ".final.partial"
        shutil.rmtree(staging, ignore_errors=True)
        try:
            self._export(pl_module, staging, trainer.global_step)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        # Beside the step-<N> folders: every file is complete before it is renamed in; the
        # manifest of the files being replaced goes first, the new one comes in last.
        (final / MANIFEST).unlink(missing_ok=True)
        for file in sorted(staging.iterdir(), key=lambda path: path.name == MANIFEST):
            if file.is_dir():  # a1111/: a folder replaces the one an earlier run left whole
                swap_in(file, final / file.name)
            else:
                os.replace(file, final / file.name)
        staging.rmdir()

    def on_train_batch_start(self, *args: Any) -> None:
        self.place_pending()  # the previous step's checkpoint has been written by now

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # The checkpoint callback saves last.ckpt after every on_train_end (Lightning runs it
        # last): that save's step export is staged after on_train_end placed the others.
        self.place_pending()

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        for staging, _ in self._pending:  # their checkpoints may not exist: never placed
            shutil.rmtree(staging, ignore_errors=True)
        self._pending = []

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if not self.with_checkpoints:
            return
        final = self.export_dir(trainer) / f"step-{trainer.global_step}"  # every rank
        if not trainer.is_global_zero:
            return
        if any(final == pending for _, pending in self._pending):
            return  # the step's second checkpoint file (last.ckpt): same weights, one export
        staging = final.with_name(f".{final.name}.pending")
        shutil.rmtree(staging, ignore_errors=True)
        try:
            self._export(pl_module, staging, trainer.global_step)
        except BaseException:  # a full disk midway: no hidden half-written folder is left
            shutil.rmtree(staging, ignore_errors=True)
            raise
        self._pending.append((staging, final))

    def place_pending(self) -> None:
        """Put staged step exports in place (their checkpoints are written by now)."""
        for staging, final in self._pending:
            swap_in(staging, final)
        self._pending = []

    @staticmethod
    def _export(pl_module: L.LightningModule, folder: Path, step: int) -> None:
        # Any module with export(folder) and EXPORT_FORMATS (a baseline, or the
        # contextualizer's pretraining).
        if not isinstance(pl_module, PersonalizationModule) and not callable(
            getattr(pl_module, "export", None)
        ):
            raise TypeError("ExportWeights needs a module with an export(folder) method.")
        export_with_manifest(pl_module, folder, step)
