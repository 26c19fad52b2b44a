"""Peak memory and step time of every baseline at SD 1.5 size, with and without the switches.

    python scripts/benchmark_memory.py [--resolution 512] [--batch-size 1] [--cases lora dreambooth]

SD 1.5's UNet, VAE and text encoder are built from their published configs with random weights
(``sd15-random``, pretrained/sd15_random.py; VisualEncoder's ViT-H image encoder and PDLoss's
CLIP projection likewise). Each (case, switches) pair runs 2 training steps on DreamBench's dog
photos in a fresh process, and reports that process's peak: ``torch.cuda.max_memory_allocated``
on a GPU, peak RSS from the start of training on the CPU (where it still ranks the
configurations; weights, gradients, optimizer state and activations all live there).
Switch sets: ``plain`` (fp32), each switch alone, and ``all`` (configs/low_memory.yaml: bf16
storage + bf16 autocast, gradient checkpointing, 8-bit AdamW). DreamBooth runs without prior
preservation (the class half would double its batch in every column alike). On this 2-core
CPU machine use ``--resolution 256``: 512 px does not fit 24 GB for DreamBooth in fp32.
Not a test: CI does not run it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datamodules.extras.captions import CaptionOptions  # noqa: E402
from datamodules.personalization import ConceptData, PersonalizationDataModule  # noqa: E402
from losses.dd_loss import DenoisingDecoupleLoss  # noqa: E402
from losses.pd_loss import PriorDecoupleLoss  # noqa: E402
from losses.spl import SemanticPreservationLoss  # noqa: E402
from models import (  # noqa: E402
    XTI,
    CustomDiffusion,
    DreamBooth,
    LoRA,
    TextualInversion,
    VisualEncoder,
)
from pretrained.sd15_random import ensure_sd15_random, ensure_sd15_random_helpers  # noqa: E402
from pretrained.tiny_sd import SD15_RANDOM_NAME  # noqa: E402
from training.memory import MemorySettings  # noqa: E402

DREAMBENCH = Path(__file__).resolve().parents[2] / "shared" / "data" / "dreambench"
SWITCHES: dict[str, dict[str, Any]] = {
    "plain": {},
    "bf16": {"frozen_dtype": "bf16"},
    "checkpointing": {"gradient_checkpointing": True},
    "adam_8bit": {"adam_8bit": True},
    "all": {"frozen_dtype": "bf16", "gradient_checkpointing": True, "adam_8bit": True},
    # The low-memory overlay where bitsandbytes cannot be installed.
    "bf16+checkpointing": {"frozen_dtype": "bf16", "gradient_checkpointing": True},
}
CASES = (
    "textual_inversion", "custom_diffusion", "dreambooth", "lora", "xti", "visual_encoder",
    "cd+spl", "cd+dd+pd",
)  # fmt: skip


def build_case(
    case: str, switches: dict[str, Any], resolution: int, batch_size: int, model: str | None = None
) -> tuple:
    """(module, datamodule) of one case at SD 1.5 size (or on ``model``: a built-in name such
    as ``sdxl-random`` or ``tiny-sd``). DreamBench's dog (and cat) when ../shared is beside the
    checkout, else the synthetic toy (a GPU machine gets the checkout alone)."""
    helpers = ensure_sd15_random_helpers() if model in (None, SD15_RANDOM_NAME) else None
    model = model or str(ensure_sd15_random())
    photos = DREAMBENCH.is_dir()
    data_args: dict[str, Any] = {}
    if case == "visual_encoder":  # trains across subjects sharing the token
        cat = ConceptData("<v1>", "cat", str(DREAMBENCH / "cat")) if photos else ConceptData("<v1>")
        data_args = {"shared_tokens": True, "additional_concepts": [cat]}
    if case == "cd+dd+pd":
        # The prompts stand in for BLIP captions.
        data_args["captions"] = CaptionOptions(captioner=None)
    if photos:
        data_args.update(instance_data_dir=str(DREAMBENCH / "dog"), class_word="dog")
    data = PersonalizationDataModule(
        resolution=resolution, batch_size=batch_size, repeats=50, num_workers=0, **data_args
    )
    common = {
        "pretrained_model_name_or_path": model,
        "concepts": data.concepts,
        "memory": MemorySettings(**switches),
    }
    regularizers = {
        "cd+spl": [SemanticPreservationLoss()],
        "cd+dd+pd": [
            DenoisingDecoupleLoss(),
            PriorDecoupleLoss(clip_model=None if helpers is None else str(helpers / "clip_text")),
        ],
    }
    builders = {
        "textual_inversion": lambda: TextualInversion(**common),
        "custom_diffusion": lambda: CustomDiffusion(**common),
        "dreambooth": lambda: DreamBooth(**common),
        "lora": lambda: LoRA(**common),
        "xti": lambda: XTI(**common),
        "visual_encoder": lambda: VisualEncoder(
            **(
                {}
                if helpers is None
                else {"image_encoder_name_or_path": str(helpers / "image_encoder")}
            ),
            **common,
        ),
    }
    builder = builders.get(case, lambda: CustomDiffusion(regularizers=regularizers[case], **common))
    module = builder()
    for who, keys in module.batch_requirements().items():
        data.request(keys, who)
    return module, data


def reset_peak_rss() -> None:
    """Start a new peak-RSS window (Linux: "5" to clear_refs resets VmHWM)."""
    Path("/proc/self/clear_refs").write_text("5")


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class StepClock(L.Callback):
    """Step end times; on the CPU the peak-RSS window opens when training starts, so loading
    (fp32 weights before the half-precision cast) does not count."""

    def __init__(self) -> None:
        self.ends: list[float] = []

    def on_train_start(self, *args: Any) -> None:
        if not torch.cuda.is_available():
            reset_peak_rss()

    def on_train_batch_end(self, *args: Any) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.ends.append(time.perf_counter())


def worker(
    case: str,
    switch_set: str,
    resolution: int,
    batch_size: int,
    model: str | None = None,
    steps: int = 2,
) -> dict[str, Any]:
    """One (case, switches) pair, ``steps`` steps; its peak memory (MB), the median time of the
    steps after the first (s) and the first step's (s, with the set-up before it)."""
    switches = SWITCHES[switch_set]
    module, data = build_case(case, switches, resolution, batch_size, model)
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    clock = StepClock()
    cuda = torch.cuda.is_available()
    trainer = L.Trainer(
        accelerator="gpu" if cuda else "cpu", devices=1, max_steps=steps,
        precision="bf16-mixed" if switches.get("frozen_dtype") else "32-true",
        logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, callbacks=[clock],
    )  # fmt: skip
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    trainer.fit(module, datamodule=data)
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else peak_rss_mb()
    gaps = [b - a for a, b in zip(clock.ends, clock.ends[1:])]
    return {
        "case": case, "switches": switch_set, "peak_mb": peak, "trainable": trainable,
        "first_step_s": clock.ends[0] - start, "step_s": statistics.median(gaps),
    }  # fmt: skip


def run_in_subprocess(case: str, switch_set: str, args: argparse.Namespace) -> dict[str, Any]:
    command = [
        sys.executable, __file__, "--worker", case, switch_set,
        "--resolution", str(args.resolution), "--batch-size", str(args.batch_size),
    ]  # fmt: skip
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0 or not lines:
        tail = result.stderr.strip().splitlines()[-1:] or ["(no output)"]
        return {"case": case, "switches": switch_set, "error": tail[0][:120]}
    return json.loads(lines[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    parser.add_argument("--switches", nargs="+", default=list(SWITCHES), choices=list(SWITCHES))
    parser.add_argument("--worker", nargs=2, metavar=("CASE", "SWITCHES"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(*args.worker, args.resolution, args.batch_size)))
        return
    ensure_sd15_random(), ensure_sd15_random_helpers()  # built once, outside the timings
    where = "CUDA peak allocated" if torch.cuda.is_available() else "peak RSS (CPU)"
    print(f"# {args.resolution} px, batch {args.batch_size}, {where}; step = the second step")
    print(f"{'case':<18}{'switches':<15}{'trainable':>13}{'peak MB':>10}{'vs plain':>10}"
          f"{'step s':>9}")  # fmt: skip
    for case in args.cases:
        plain = None
        for switch_set in args.switches:
            row = run_in_subprocess(case, switch_set, args)
            if "error" in row:
                print(f"{case:<18}{switch_set:<15}  failed: {row['error']}", flush=True)
                continue
            plain = row["peak_mb"] if switch_set == "plain" else plain
            ratio = f"{row['peak_mb'] / plain:.2f}x" if plain else "-"
            print(
                f"{case:<18}{switch_set:<15}{row['trainable']:>13,}{row['peak_mb']:>10.0f}"
                f"{ratio:>10}{row['step_s']:>9.2f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
