"""Optimizer groups, learning-rate scaling and schedule, and checkpoints that hold only what
trains: the parts of `PersonalizationModule` that Lightning calls around the step.

Mixed into the module (``self.trainable_groups``, ``self.learning_rates``, ``self.trainer``
are the module's). A checkpoint keeps the trained weights plus optimizer and loop state, so it
stays small and still resumes exactly (``strict_loading`` is off on the module).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from training.finite_guard import check_trained_finite
from training.memory import adam_8bit


class OptimizationMixin:
    """``configure_optimizers`` and the checkpoint hooks of `PersonalizationModule`."""

    def configure_optimizers(self) -> dict[str, Any]:
        groups = self.trainable_groups()
        unknown = set(self.learning_rates) - set(groups)
        if unknown:
            raise ValueError(
                f"learning_rates names groups {sorted(unknown)} that {type(self).__name__} does "
                f"not have; its groups are {sorted(groups)}."
            )
        param_groups = [{"params": params, "name": name} for name, params in groups.items()]
        for group in param_groups:
            if group["name"] in self.learning_rates:
                group["lr"] = self.learning_rates[group["name"]]
        optimizer = self.optimizer_factory(param_groups)
        if self.memory.adam_8bit:  # the same groups and settings, the state in 8 bits
            optimizer = adam_8bit(optimizer)
        factor = self._lr_scale_factor() if self.scale_lr else 1.0
        for group in optimizer.param_groups:
            group["lr"] *= factor
        warmup = max(self.lr_warmup_steps, 0)
        if self.lr_scheduler_factory is not None:
            schedule = self.lr_scheduler_factory(optimizer)
        else:
            schedule = torch.optim.lr_scheduler.LambdaLR(
                optimizer, lambda step: min(1.0, (step + 1) / warmup) if warmup else 1.0
            )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        """Lightning's step, then a check that no trained weight became non-finite (before
        the step's checkpoint callbacks can save it)."""
        super().optimizer_step(*args, **kwargs)  # type: ignore[misc]
        check_trained_finite(self.named_parameters(), self.global_step)

    def _lr_scale_factor(self) -> float:
        datamodule = getattr(self.trainer, "datamodule", None)
        batch_size = getattr(datamodule, "batch_size", 1)
        return float(batch_size * self.trainer.accumulate_grad_batches * self.trainer.world_size)

    def trainable_state_keys(self) -> set[str]:
        return {name for name, p in self.named_parameters() if p.requires_grad}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        keep = self.trainable_state_keys()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint of other trained weights (another baseline, another ``rank``)
        before Lightning loads it, naming a weight and the fix."""
        trained = self.trainable_state_keys()
        stored = checkpoint["state_dict"]
        fix = f"resume with the settings the checkpoint was trained with ({self._run_config()})"
        missing = trained - set(stored)
        if missing:
            raise KeyError(
                f"Checkpoint lacks {len(missing)} trained weights of {type(self).__name__} "
                f"(e.g. {sorted(missing)[:3]}): it was written by another model or config; "
                f"{fix}."
            )
        unexpected = sorted(set(stored) - trained)
        if unexpected:
            raise ValueError(
                f"the checkpoint holds {len(unexpected)} weights that {type(self).__name__} "
                f"with these settings does not train (e.g. {unexpected[0]!r}): it was written "
                f"by another model or config; {fix}."
            )
        own = dict(self.named_parameters())
        for key in sorted(trained):
            if tuple(stored[key].shape) != tuple(own[key].shape):
                raise ValueError(
                    f"the checkpoint's weight {key!r} is {list(stored[key].shape)} but "
                    f"{list(own[key].shape)} in this run (another rank, num_vectors or model?); "
                    f"{fix}."
                )

    def _run_config(self) -> str:
        """The config.yaml of the checkpoint's run, beside its checkpoints/ folder, if known."""
        path = getattr(self._trainer, "ckpt_path", None) if self._trainer is not None else None
        config = Path(path).parent.parent / "config.yaml" if path else None
        if config is not None and config.is_file():
            return f"--config {config}"
        return "the config.yaml of its run"
