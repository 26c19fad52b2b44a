"""Step time of each baseline on the tiny pipeline: Lightning's loop over a plain reference loop,
and each baseline's step over Textual Inversion's (both Lightning, in this one run).

    .venv/bin/python scripts/benchmark_steps.py [--steps 30] [--model tiny-sd | tiny-sdxl]

Both loops run in this one process on the same batches (the same module code: compute_losses,
backward, AdamW), so the ratio isolates what the Lightning loop adds. Prints one line per
baseline with the trainable parameter count. Not a test: timings are measured, not asserted.
On the tiny model the text encoder costs about what the UNet does, so the per-layer and
per-stage baselines (XTI, NeTI, ProSpect: one text-encoder pass per copy) weigh more here
than on SD 1.5, where the UNet dominates.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datamodules.personalization import ConceptData, PersonalizationDataModule  # noqa: E402
from models import (  # noqa: E402
    XTI,
    CustomDiffusion,
    DreamBooth,
    EDLoRA,
    IPAdapter,
    LoRA,
    NeTI,
    ProSpect,
    SVDiff,
    TextualInversion,
    VisualEncoder,
)
from models.base import PersonalizationModule  # noqa: E402

BASELINES: dict[str, tuple[type[PersonalizationModule], dict[str, Any]]] = {
    "textual_inversion": (TextualInversion, {}),
    "custom_diffusion": (CustomDiffusion, {"rescale_augmentation": True}),
    "dreambooth": (DreamBooth, {}),  # no prior preservation: it needs a class folder
    "lora": (LoRA, {}),
    "xti": (XTI, {}),
    "neti": (NeTI, {}),
    "prospect": (ProSpect, {}),
    "svdiff": (SVDiff, {}),
    "ed_lora": (EDLoRA, {}),  # Mix-of-Show's per-concept stage
    "ip_adapter": (IPAdapter, {}),  # each toy image its own reference, as each face would be
    # Three synthetic subjects (other seeds) share the token: VisualEncoder trains across them.
    "visual_encoder": (
        VisualEncoder,
        {"shared_tokens": True, "additional_concepts": [ConceptData("<v1>")] * 2},
    ),
}
WARMUP = 3


class StepTimer(L.Callback):
    """Wall time between consecutive training-batch ends."""

    def __init__(self) -> None:
        self.ends: list[float] = []

    def on_train_batch_end(self, *args: Any) -> None:
        self.ends.append(time.perf_counter())


def build(name: str, model: str) -> tuple[PersonalizationModule, PersonalizationDataModule]:
    cls, data_args = BASELINES[name]
    data = PersonalizationDataModule(resolution=32, batch_size=2, repeats=50, **data_args)
    module = cls(pretrained_model_name_or_path=model, concepts=data.concepts)
    for who, keys in module.batch_requirements().items():  # as the module's setup() asks
        data.request(keys, who)
    return module, data


def lightning_step_seconds(name: str, model: str, steps: int) -> float:
    module, data = build(name, model)
    timer = StepTimer()
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=steps + WARMUP,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[timer],
    )
    trainer.fit(module, datamodule=data)
    gaps = [b - a for a, b in zip(timer.ends[WARMUP - 1 :], timer.ends[WARMUP:])]
    return statistics.median(gaps)


def report_against_plain(
    title: str, model: str, steps: int, repeats: int, plain: Callable[[str, int], float]
) -> None:
    """Alternating medians of the project's LoRA step and ``plain(model, steps)``; prints
    both and the ratio's median and spread."""
    ours, theirs = [], []
    for _ in range(repeats):
        ours.append(lightning_step_seconds("lora", model, steps))
        theirs.append(plain(model, steps))
    ratios = [a / b for a, b in zip(ours, theirs)]
    print(f"{title}, {steps} steps x {repeats}")
    print(f"project (Lightning) ms: {[round(x * 1e3, 1) for x in ours]}")
    print(f"plain diffusers loop ms: {[round(x * 1e3, 1) for x in theirs]}")
    spread = f"min {min(ratios):.2f}, max {max(ratios):.2f}"
    print(f"ratio median {statistics.median(ratios):.2f} ({spread})")


def reference_step_seconds(name: str, model: str, steps: int) -> float:
    module, data = build(name, model)
    module.train()
    optimizer = module.configure_optimizers()["optimizer"]
    batches = iter(data.train_dataloader())
    gaps = []
    for step in range(steps + WARMUP):
        start = time.perf_counter()
        batch = next(batches)
        loss = module.compute_losses(batch, module.sample_draws(batch, step))["total"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= WARMUP:
            gaps.append(time.perf_counter() - start)
    return statistics.median(gaps)


def trainable_count(name: str, model: str) -> int:
    module, _ = build(name, model)
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--model", default="tiny-sd")
    args = parser.parse_args()
    torch.manual_seed(0)
    header = f"{'baseline':<20}{'trainable':>11}{'lightning ms':>14}{'reference ms':>14}"
    print(f"{header}{'ratio':>8}{'/ TI':>8}")
    textual_inversion = None
    for name in BASELINES:
        try:
            build(name, args.model)
        except ValueError as error:  # a baseline that does not support the model's family
            print(f"{name:<20}skipped ({str(error).splitlines()[0]})")
            continue
        ours = lightning_step_seconds(name, args.model, args.steps)
        reference = reference_step_seconds(name, args.model, args.steps)
        count = trainable_count(name, args.model)
        textual_inversion = textual_inversion or ours  # the first row: Textual Inversion
        print(
            f"{name:<20}{count:>11,}{ours * 1e3:>14.1f}{reference * 1e3:>14.1f}"
            f"{ours / reference:>8.2f}{ours / textual_inversion:>8.2f}"
        )


if __name__ == "__main__":
    main()
