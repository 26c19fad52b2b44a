"""A run that fails before its first step leaves no ``version_N/`` folder behind.

By then the folder holds only what start-up wrote (``config.yaml``, ``hparams.yaml``, an event
file without a step); kept, it reads as a run in TensorBoard and in ``runs/``. It is removed
only while it holds nothing else (no checkpoint, no export, no images), rank zero, and the
error that stopped the run is still reported as usual.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import lightning as L

from callbacks.run_summary import run_folder

# What start-up writes into a run folder before any step.
START_UP_FILES = ("config.yaml", "hparams.yaml")
EVENT_FILE_PREFIX = "events.out.tfevents."


def only_start_up_files(folder: Path) -> bool:
    return all(
        entry.is_file()
        and (entry.name in START_UP_FILES or entry.name.startswith(EVENT_FILE_PREFIX))
        for entry in folder.iterdir()
    )


class RemoveEmptyRun(L.Callback):
    """On a failure before step 1, deletes the run folder if start-up files are all it holds."""

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if trainer.global_step > 0 or not trainer.is_global_zero or not trainer.loggers:
            return
        folder = run_folder(trainer)  # not trainer.log_dir: a collective under DDP
        if (
            folder.is_dir()
            and folder != Path(trainer.default_root_dir)
            and only_start_up_files(folder)
        ):
            shutil.rmtree(folder, ignore_errors=True)
