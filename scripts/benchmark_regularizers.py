"""Cost of each regularizer: its training step over the plain step of the same baseline.

    .venv/bin/python scripts/benchmark_regularizers.py [--steps 30] [--model tiny-sd]

Custom Diffusion (the ClassDiffusion / ACCORD baseline) is built once plain and once per
regularizer, each with its own DataModule (same seed, so the same batches). Their steps run
interleaved in one process, in a rotating order, so machine load drifts alike for all: every
round times one step of each (compute_losses, backward, AdamW step; the batch is fetched
before the clock starts). The ratio is the median over rounds of variant / plain of the same
round. Memory: each variant then runs alone in a child process (``--only``) while a thread
samples its resident set size (torch's CPU tensors bypass tracemalloc, so RSS it is): the peak,
and its rise during the steps over the RSS before them ("step MB", what training adds on top
of the loaded model; compare it with the plain row). MLM joins when its contextualizer has been
pretrained (``configs/diverse_context/contextualizer.yaml``), else it is listed as skipped.
``clif`` adds CLIF's InfoNCE to Custom Diffusion; ``clif_s1`` is CLIF's stage 1 step (tokens
and text-encoder LoRA, no UNet call) over the same plain Custom Diffusion step.
Not a test: timings are measured, not asserted; targets are printed beside them.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datamodules.personalization import PersonalizationDataModule  # noqa: E402
from losses.base import Regularizer  # noqa: E402
from losses.clif import ContrastiveLanguageImageLoss  # noqa: E402
from losses.dd_loss import DenoisingDecoupleLoss  # noqa: E402
from losses.pd_loss import PriorDecoupleLoss  # noqa: E402
from losses.spl import SemanticPreservationLoss  # noqa: E402
from losses.sude import SubjectDerivedLoss  # noqa: E402
from models import CLIFTextTuning, CustomDiffusion, LoRA  # noqa: E402
from preparation.augmentation.settings import AugmentationSettings  # noqa: E402


def _mlm() -> list[Regularizer]:
    from losses.mlm import MaskedLanguageModelingLoss

    return [MaskedLanguageModelingLoss()]


VARIANTS: dict[str, Callable[[], list[Regularizer]]] = {
    "plain": list,
    "spl": lambda: [SemanticPreservationLoss()],
    "pd": lambda: [PriorDecoupleLoss()],
    "dd": lambda: [DenoisingDecoupleLoss()],
    "sude": lambda: [SubjectDerivedLoss()],
    "mlm": _mlm,
    "clif": lambda: [ContrastiveLanguageImageLoss(weight=0.1)],
    "clif_s1": list,  # CLIF's stage 1 (models.CLIFTextTuning): the contrastive loss alone
}
# CLIF's pairs: R-Aug only (G-Aug's general images are generated under a Trainer), built once
# and cached like any run's; what the loss costs does not depend on the kind of pair.
CLIF_DATA = {"augmentation": AugmentationSettings(g_aug=0, r_aug=20, m_aug=0,
                                                  contrastive_kinds=("r_aug",))}  # fmt: skip
DATA_OPTIONS: dict[str, dict[str, Any]] = {"clif": CLIF_DATA, "clif_s1": CLIF_DATA}
TARGETS = {"spl": 1.05, "pd": 1.05, "mlm": 1.15, "dd": 2.7}  # issue 4, on CPU
WARMUP = 3


def baseline_for(model: str) -> type:
    """Custom Diffusion (ClassDiffusion's and ACCORD's baseline) where it runs; LoRA on a
    family whose denoiser has no UNet cross-attention (FLUX)."""
    from backbones import choose_family

    return CustomDiffusion if choose_family(model)[0].name in CustomDiffusion.families else LoRA


class Stepper:
    """A module's optimizer and batch stream, timed one step at a time."""

    module: Any

    def start_stepping(self, data: PersonalizationDataModule) -> None:
        self.module.train()
        self.optimizer = self.module.configure_optimizers()["optimizer"]
        self.batches = iter(data.train_dataloader())
        self.steps = 0

    def step(self) -> float:
        """Seconds of one optimisation step on the next batch."""
        seconds = timed_step(self.module, self.optimizer, next(self.batches), self.steps)
        self.steps += 1
        return seconds


class Variant(Stepper):
    """One Custom Diffusion module with its regularizers, optimizer and batch stream."""

    def __init__(self, name: str, model: str, batch_size: int, resolution: int | None) -> None:
        self.name = name
        module_class = CLIFTextTuning if name == "clif_s1" else baseline_for(model)
        self.module = module_class(
            pretrained_model_name_or_path=model,
            concepts=PersonalizationDataModule(resolution=8).concepts,
            regularizers=VARIANTS[name](),
        )
        module = self.module
        side = resolution or module.family.default_resolution(module.unet, module.vae)
        data = PersonalizationDataModule(
            resolution=side, batch_size=batch_size, repeats=10_000, rescale_augmentation=True,
            **DATA_OPTIONS.get(name, {}),
        )  # fmt: skip
        if name == "clif_s1":
            self.module.contrastive.prepare(self.module)
        # What the module's setup does under a Trainer: prepare the losses, request their data
        # and encode the constant texts it can give.
        for regularizer in self.module.regularizers:
            regularizer.prepare(self.module)
        self.module.attach_datamodule(data)
        self.module.prefill_regularizers(data)
        self.start_stepping(data)


def timed_step(
    module: Any, optimizer: torch.optim.Optimizer, batch: dict[str, Any], step: int
) -> float:
    """Seconds of one optimisation step (losses, backward, optimizer, and the EMA's update
    when the module keeps one) on a batch fetched before the clock starts."""
    start = time.perf_counter()
    draws = module.sample_draws(batch, step)
    module.compute_losses(batch, draws)["total"].backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    average = module.weights_average()
    if average is not None:
        average.update()
    return time.perf_counter() - start


def build(
    names: list[str], model: str, batch_size: int, resolution: int | None
) -> dict[str, Variant]:
    variants = {}
    for name in names:
        try:
            variants[name] = Variant(name, model, batch_size, resolution)
        except (OSError, ValueError, ImportError) as error:
            if name == "plain":
                raise
            print(f"{name}: skipped ({str(error).splitlines()[0]})")
    return variants


def step_ratios(variants: dict[str, Variant], steps: int) -> dict[str, tuple[float, float]]:
    """Per variant: (median step seconds, median over rounds of its time / plain's)."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    order = list(variants)
    for round_index in range(WARMUP + steps):
        shift = round_index % len(order)
        for name in order[shift:] + order[:shift]:
            seconds = variants[name].step()
            if round_index >= WARMUP:
                times[name].append(seconds)
    plain = times["plain"]
    return {
        name: (
            statistics.median(values),
            statistics.median(v / p for v, p in zip(values, plain)),
        )
        for name, values in times.items()
    }


def peak_rss_mb(args: argparse.Namespace, name: str) -> tuple[float, float] | None:
    """(peak RSS, its rise during the steps) in MB of a child that runs only this variant."""
    command = [
        sys.executable, __file__, "--only", name, "--model", args.model,
        "--batch-size", str(args.batch_size), "--memory-steps", str(args.memory_steps),
    ]  # fmt: skip
    if args.threads:
        command += ["--threads", str(args.threads)]
    if args.resolution:
        command += ["--resolution", str(args.resolution)]
    result = subprocess.run(command, capture_output=True, text=True)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if not lines:
        return None
    report = json.loads(lines[-1])
    return report["peak_rss_mb"], report["step_rss_mb"]


def resident_bytes() -> int:
    """Current resident set size of this process (Linux /proc)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize()


def run_only(args: argparse.Namespace) -> None:
    """Child mode: steps of one variant while a thread samples RSS; prints one JSON line with
    the peak RSS during the steps and its rise over the RSS before them (the step's memory)."""
    variant = Variant(args.only, args.model, args.batch_size, args.resolution)
    before = resident_bytes()
    peak, done = [before], threading.Event()

    def sample() -> None:
        while not done.wait(0.0005):  # torch kernels release the GIL, so this keeps sampling
            peak[0] = max(peak[0], resident_bytes())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    for _ in range(args.memory_steps):
        variant.step()
    done.set()
    sampler.join()
    peak[0] = max(peak[0], resident_bytes())
    print(json.dumps({"peak_rss_mb": peak[0] / 2**20, "step_rss_mb": (peak[0] - before) / 2**20}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="timed rounds (after warm-up)")
    parser.add_argument("--model", default="tiny-sd")
    parser.add_argument("--batch-size", type=int, default=2, help="ClassDiffusion's batch 2")
    parser.add_argument(
        "--resolution",
        type=int,
        help="image side (default: the model's); larger makes the "
        "activation memory, and so the regularizers' share of it, visible on the tiny model",
    )
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--memory-steps", type=int, default=5)
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-RSS children")
    parser.add_argument("--only", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.only:
        run_only(args)
        return
    variants = build(list(VARIANTS), args.model, args.batch_size, args.resolution)
    results = step_ratios(variants, args.steps)
    print(
        f"{baseline_for(args.model).__name__} on {args.model}, batch {args.batch_size}, resolution "
        f"{args.resolution or 'native'}, {args.steps} interleaved rounds, "
        f"{torch.get_num_threads()} threads"
    )
    print(
        f"{'variant':<8}{'step ms':>10}{'ratio':>8}{'target':>8}{'peak RSS MB':>13}{'step MB':>9}"
    )
    for name, (seconds, ratio) in results.items():
        memory = None if args.no_memory else peak_rss_mb(args, name)
        target = f"<={TARGETS[name]:.2f}" if name in TARGETS else ""
        rss = f"{memory[0]:>13.0f}{memory[1]:>9.1f}" if memory else f"{'-':>13}{'-':>9}"
        print(f"{name:<8}{seconds * 1e3:>10.1f}{ratio:>8.2f}{target:>8}{rss}")


if __name__ == "__main__":
    main()
