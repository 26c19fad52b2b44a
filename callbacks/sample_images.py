"""Generate fixed-seed samples of validation prompts into TensorBoard as one grid."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger

from core.images import make_grid
from generation.evaluation import preview_steps
from models.base import PersonalizationModule

DEFAULT_PROMPTS = (
    "a photo of a {}",
    "a {} on the beach",
    "a {} in the jungle",
    "a {} wearing a santa hat",
)


class SampleImages(L.Callback):
    """Every ``every_n_steps`` (and at step 0): ``images_per_prompt`` images per prompt.

    Prompts take "{}" for the first concept's phrase ("<v1> dog"). Seeds are fixed, so the grids
    of successive steps differ only by what training changed. Rank zero only.
    """

    def __init__(
        self,
        every_n_steps: int = 100,
        prompts: list[str] | None = None,
        images_per_prompt: int = 2,
        num_inference_steps: int = 25,
        guidance_scale: float = 6.0,
        seed: int = 0,
        tag: str = "samples",
    ) -> None:
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}.")
        self.every_n_steps = every_n_steps
        self.prompts = list(prompts or DEFAULT_PROMPTS)
        self.images_per_prompt = images_per_prompt
        self.num_inference_steps = num_inference_steps
        self.guidance_scale = guidance_scale
        self.seed = seed
        self.tag = tag
        self._last_logged_step = -1

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log_samples(trainer, pl_module)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any
    ) -> None:
        if trainer.global_step % self.every_n_steps == 0:
            self._log_samples(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log_samples(trainer, pl_module)

    def _log_samples(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        step = trainer.global_step
        if not trainer.is_global_zero or step == self._last_logged_step:
            return
        if not isinstance(pl_module, PersonalizationModule):
            raise TypeError("SampleImages needs a PersonalizationModule.")
        self._last_logged_step = step
        phrase = pl_module.concepts[0].phrase
        prompts = [p.format(phrase) for p in self.prompts for _ in range(self.images_per_prompt)]
        with trainer.precision_plugin.forward_context():
            images = pl_module.generate(
                prompts,
                seed=self.seed,
                num_inference_steps=preview_steps(pl_module, self.num_inference_steps),
                guidance_scale=self.guidance_scale,
            )
        grid = make_grid(images, columns=self.images_per_prompt * 2)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image(self.tag, grid, step)
                logger.experiment.add_text(f"{self.tag}/prompts", "\n\n".join(self.prompts), step)
