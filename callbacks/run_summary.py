"""What a finished command tells the user: where a trained run went, or what a test scored.

Printed by train.py after the command returns (rank zero), so a user who comes back to a
terminal sees the run folder, the exported files, the TensorBoard command, or the results file
and its main scores without searching ``runs/``. Rank zero alone reads the folders, so nothing
here may be a collective (``trainer.log_dir`` broadcasts under DDP: the logger's is read).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from callbacks.export import ExportWeights

PER_CONCEPT = re.compile(r"_c\d+$")  # clip_i_c0: concept 0's score (their mean is clip_i)


def run_folder(trainer: L.Trainer) -> Path:
    """The run's folder as ``trainer.log_dir`` names it, without its broadcast."""
    logger = trainer.loggers[0] if trainer.loggers else None
    if isinstance(logger, (TensorBoardLogger, CSVLogger)):
        return Path(logger.log_dir)
    return Path(trainer.default_root_dir)


def _exported_files(trainer: L.Trainer) -> tuple[Path | None, list[str]]:
    """The final export folder and its files (not the step-<N> folders beside them)."""
    exporter = next((c for c in trainer.callbacks if isinstance(c, ExportWeights)), None)
    if exporter is None:
        return None, []
    folder = run_folder(trainer) / exporter.dirname
    if not folder.is_dir():
        return folder, []
    names = sorted(
        f.name + ("/" if f.is_dir() else "")
        for f in folder.iterdir()
        if not f.name.startswith(".") and not f.name.startswith("step-")
    )
    return folder, names


def fit_summary(trainer: L.Trainer) -> list[str]:
    run = run_folder(trainer)
    lines = [f"done: {trainer.global_step} steps; run folder {run}"]
    export, files = _exported_files(trainer)
    if export is not None and files:
        lines.append(f"export: {export} ({', '.join(files)})")
    boards = [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
    if boards:
        lines.append(f"tensorboard --logdir {boards[0].root_dir}")
    return lines


def main_scores(metrics: dict[str, float]) -> str:
    """The scores over all concepts (not the per-concept ``<metric>_c<i>``), 4 digits each."""
    shown = {k: v for k, v in metrics.items() if not PER_CONCEPT.search(k)}
    return "  ".join(f"{k} {v:.4f}" for k, v in shown.items())


def evaluation_summary(module: Any, stage: str) -> list[str]:
    results: Path | None = getattr(module, "eval_results_file", None)
    folder: Path | None = getattr(module, "eval_output_folder", None)
    if stage == "test" and results is not None and results.is_file():
        metrics = json.loads(results.read_text())["metrics"]
        return [f"done: results {results}", f"scores: {main_scores(metrics)}"]
    if folder is not None:
        return [f"done: images in {folder / 'images'} (manifest.csv beside them)"]
    return []


def summary_lines(subcommand: str | None, trainer: L.Trainer, module: Any) -> list[str]:
    """The closing lines of ``fit`` / ``test`` / ``predict``; none on other ranks."""
    if not trainer.is_global_zero:
        return []
    if subcommand == "fit":
        return fit_summary(trainer)
    if subcommand in ("test", "predict"):
        return evaluation_summary(module, subcommand)
    return []
