"""An exponential moving average of the trained weights (tokens, LoRA, K/V, a DreamBooth UNet),
used in place of them for sampling, ``test`` and the export when ``ema`` is set.

Built on diffusers' ``EMAModel`` rather than Lightning's ``WeightAveraging`` callback: Lightning
averages a deep copy of the whole LightningModule, frozen UNet, text encoders and VAE included,
which doubles the model in memory to average a few thousand token and LoRA numbers; EMAModel
averages exactly the parameters it is given, with the decay schedule diffusers' training scripts
use (``min(decay, (1 + s) / (10 + s))`` after ``update_after_step``, or the warm-up
``1 - (1 + s / inv_gamma) ** -power``), and its state (shadow weights, step count) goes into the
checkpoint, so a resumed run continues the same average.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

from diffusers.training_utils import EMAModel
from torch import nn

EMA_STATE = "ema"
EMA_NAMES = "ema_parameter_names"


@dataclass(frozen=True)
class EMASettings:
    """diffusers' EMAModel options (its defaults): see the module docstring for the schedule."""

    decay: float = 0.9999
    update_after_step: int = 0
    use_ema_warmup: bool = False
    inv_gamma: float = 1.0
    power: float = 2 / 3

    def __post_init__(self) -> None:
        if not 0.0 <= self.decay < 1.0:
            raise ValueError(f"ema.decay must be in [0, 1), got {self.decay}.")
        if self.update_after_step < 0:
            raise ValueError(f"ema.update_after_step must be >= 0, got {self.update_after_step}.")


def trained_parameters(module: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters that train, by name (sorted, so the average's order is fixed)."""
    return {name: p for name, p in sorted(module.named_parameters()) if p.requires_grad}


class TrainedWeightsAverage:
    """EMAModel over a module's trained parameters, with swap-in for evaluation."""

    def __init__(self, module: nn.Module, settings: EMASettings) -> None:
        self.module = module
        parameters = trained_parameters(module)
        self.names = list(parameters)
        self.average = EMAModel(
            list(parameters.values()), decay=settings.decay,
            update_after_step=settings.update_after_step, use_ema_warmup=settings.use_ema_warmup,
            inv_gamma=settings.inv_gamma, power=settings.power,
        )  # fmt: skip
        self._swapped = 0

    def _parameters(self) -> list[nn.Parameter]:
        found = trained_parameters(self.module)
        return [found[name] for name in self.names]

    def _follow_device(self) -> None:
        device = self._parameters()[0].device
        if self.average.shadow_params[0].device != device:
            self.average.to(device=device)

    def update(self) -> None:
        """One optimizer step's update of the average."""
        self._follow_device()
        self.average.step(self._parameters())

    @contextmanager
    def swapped_in(self) -> Iterator[None]:
        """The averaged weights in place of the trained ones, put back afterwards (nested
        uses swap once)."""
        if self._swapped:
            yield
            return
        self._follow_device()
        parameters = self._parameters()
        self.average.store(parameters)
        self.average.copy_to(parameters)
        self._swapped += 1
        try:
            yield
        finally:
            self._swapped -= 1
            self.average.restore(parameters)

    def state(self) -> dict[str, Any]:
        return {EMA_STATE: self.average.state_dict(), EMA_NAMES: list(self.names)}

    def load(self, checkpoint: dict[str, Any], source: str) -> None:
        """The average stored in a checkpoint; refuse one of other parameters or none."""
        if EMA_STATE not in checkpoint:
            raise ValueError(
                f"{source} holds no EMA of the weights (its run trained without "
                "model.init_args.ema): resume it without ema, or start a new run with it."
            )
        if checkpoint.get(EMA_NAMES) != self.names:
            raise ValueError(
                f"{source}'s EMA averages other parameters than this run trains: resume with "
                "the settings it was trained with."
            )
        self.average.load_state_dict(checkpoint[EMA_STATE])


class AveragedWeightsMixin:
    """The EMA's place in `PersonalizationModule`'s hooks: updated after each optimizer step,
    swapped in while sampling (and by `export_with_manifest` while exporting), kept in the
    checkpoint. ``self.ema`` is the module's option (None: off)."""

    ema: EMASettings | None
    _weights_average: TrainedWeightsAverage | None = None

    def weights_average(self) -> TrainedWeightsAverage | None:
        """The average, made on first use: before the first update it equals the weights,
        and diffusers' first update copies them (its decay is 0 at the first step)."""
        if self.ema is not None and self._weights_average is None:
            self._weights_average = TrainedWeightsAverage(self, self.ema)  # type: ignore[arg-type]
        return self._weights_average

    def averaged_weights(self) -> Any:
        """A context in which the trained parameters hold their average (no-op without ema)."""
        average = self.weights_average()
        return average.swapped_in() if average is not None else nullcontext()

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        """The step, then the average's update: before the step's checkpoint callbacks, so a
        checkpoint holds the average of the weights it holds (once per optimizer step, so
        gradient accumulation updates it once per accumulated batch)."""
        super().optimizer_step(*args, **kwargs)  # type: ignore[misc]
        self.on_weights_updated()
        average = self.weights_average()
        if average is not None:
            average.update()

    def on_weights_updated(self) -> None:
        """After each optimizer step, before the average takes the weights in: a baseline
        that constrains its weights after a step (ED-LoRA's embedding-norm stop) does it here."""

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        with self.averaged_weights():
            return super().generate(*args, **kwargs)  # type: ignore[misc]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)  # type: ignore[misc]
        average = self.weights_average()
        if average is not None:
            checkpoint.update(average.state())

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)  # type: ignore[misc]
        average = self.weights_average()
        if average is not None:
            trainer = getattr(self, "_trainer", None)
            path = getattr(trainer, "ckpt_path", None) if trainer is not None else None
            average.load(checkpoint, f"checkpoint {str(path)!r}" if path else "the checkpoint")
