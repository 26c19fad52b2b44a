"""Cost of each training option: the LoRA step with it over the same LoRA step without it.

    .venv/bin/python scripts/benchmark_options.py [--steps 30] [--model tiny-sd]

Each option is one LoRA module (tokens and adapters training) built with it; all run in this
one process on their own DataModules of the same seed, interleaved in rotating rounds as in
scripts/benchmark_regularizers.py (whose timing loop this reuses): the ratio is the median
over rounds of option / plain. A step is compute_losses, backward, AdamW, and what the option
adds after the optimizer step (the EMA's update); the masked loss's masks come from
the fallback segmenter on the synthetic toy. Not a test: measured, not asserted.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchmark_regularizers import Stepper, step_ratios  # noqa: E402  (a script beside this one)

from datamodules.buckets import BucketSettings  # noqa: E402
from datamodules.personalization import PersonalizationDataModule  # noqa: E402
from models import LoRA  # noqa: E402
from preparation.augmentation.settings import AugmentationSettings  # noqa: E402
from training.ema import EMASettings  # noqa: E402

OPTIONS: dict[str, Callable[[], dict[str, Any]]] = {
    "plain": dict,
    "ema": lambda: {"ema": EMASettings()},
    "min_snr": lambda: {"min_snr_gamma": 5.0},
    "masked": lambda: {"background_loss_weight": 0.1},
    "dora": lambda: {"adapter": "dora"},
    "loha": lambda: {"adapter": "loha"},
    "lokr": lambda: {"adapter": "lokr"},
    "buckets": dict,  # the data option below; the synthetic toy's square photos: one bucket
}
# The masked loss's masks: the synthetic toy segmented by the weight-free fallback segmenter.
DATA_OPTIONS: dict[str, dict[str, Any]] = {
    "masked": {"augmentation": AugmentationSettings(g_aug=0, r_aug=0, m_aug=0)},
    "buckets": {"buckets": BucketSettings(step=8)},
}


class OptionStep(Stepper):
    """One LoRA module with one option, its optimizer and batch stream."""

    def __init__(self, name: str, model: str, batch_size: int) -> None:
        concepts = PersonalizationDataModule(resolution=8).concepts
        self.module = LoRA(
            pretrained_model_name_or_path=model, concepts=concepts, train_tokens=True,
            **OPTIONS[name](),
        )  # fmt: skip
        side = self.module.family.default_resolution(self.module.unet, self.module.vae)
        data = PersonalizationDataModule(
            resolution=side, batch_size=batch_size, repeats=10_000, **DATA_OPTIONS.get(name, {})
        )
        self.module.attach_datamodule(data)
        self.start_stepping(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--model", default="tiny-sd")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    steps = {name: OptionStep(name, args.model, args.batch_size) for name in OPTIONS}
    print(f"{args.model}, LoRA, batch {args.batch_size}, {args.steps} rounds")
    for name, (seconds, ratio) in step_ratios(steps, args.steps).items():  # type: ignore[arg-type]
        print(f"{name:10s} {seconds * 1000:8.1f} ms/step   x{ratio:.3f} of plain")


if __name__ == "__main__":
    main()
