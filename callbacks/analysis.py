"""Shared schedule and hygiene of the analysis callbacks (drift, attention maps, text semantics).

Each measurement runs at the first training step, every ``every_n_steps`` and at the end of
training; on global rank zero only (other DDP ranks do no work at all); in eval mode without
gradients, with every submodule's train/eval flag and the RNG state restored afterwards, so
training goes on exactly as it would have without the callback.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from models.base import PersonalizationModule


@contextmanager
def off_graph(module: torch.nn.Module) -> Iterator[None]:
    """Eval mode, no gradients, RNG untouched; the exact train flags come back afterwards."""
    flags = [(m, m.training) for m in module.modules()]
    on_cuda = getattr(module, "device", torch.device("cpu")).type == "cuda"
    devices = [torch.cuda.current_device()] if on_cuda else []
    module.eval()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            yield
    finally:
        for submodule, training in flags:
            submodule.training = training


class AnalysisCallback(L.Callback):
    """Base class: subclasses implement `measure` and return the scalars to log."""

    name = "analysis"

    def __init__(self, every_n_steps: int = 100) -> None:
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}.")
        self.every_n_steps = every_n_steps
        self.last_metrics: dict[str, float] = {}
        self.history: list[tuple[int, dict[str, float]]] = []
        self.last_images: dict[str, np.ndarray | torch.Tensor] = {}
        self.seconds = 0.0  # wall time spent measuring, to keep the cost in view
        self._last_step = -1

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._run(trainer, pl_module)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *_: Any) -> None:
        if trainer.global_step % self.every_n_steps == 0:
            self._run(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._run(trainer, pl_module)

    def _run(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        step = trainer.global_step
        if not trainer.is_global_zero or step == self._last_step:
            return
        if not isinstance(pl_module, PersonalizationModule):
            raise TypeError(f"{type(self).__name__} needs a PersonalizationModule.")
        self._last_step = step
        start = time.perf_counter()
        with off_graph(pl_module), trainer.precision_plugin.forward_context():
            metrics = self.measure(trainer, pl_module, step)
        self.seconds += time.perf_counter() - start
        self.last_metrics = metrics
        self.history.append((step, metrics))
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)

    def measure(
        self, trainer: L.Trainer, module: PersonalizationModule, step: int
    ) -> dict[str, float]:
        """Compute (and log images of) one measurement; return the scalars by tag."""
        raise NotImplementedError(f"{type(self).__name__} must implement measure().")

    def log_image(
        self, trainer: L.Trainer, tag: str, image: np.ndarray | torch.Tensor, step: int
    ) -> None:
        """An (H, W, 3) uint8 array or a (3, H, W) float tensor, to every TensorBoard logger
        (and kept in ``last_images`` for a caller that wants to save it)."""
        self.last_images[tag] = image
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                dataformats = "HWC" if isinstance(image, np.ndarray) else "CHW"
                logger.experiment.add_image(tag, image, step, dataformats=dataformats)
