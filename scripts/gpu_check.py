"""The GPU figures in one command: the ClassDiffusion recipe's step time, one DreamBench
subject's evaluation, and each baseline's peak memory and step time at SD 1.5's and SDXL's
shapes (random weights at the published sizes), plain and with the low-memory switches.

    bash scripts/gpu_check.sh                 # on a lent GPU (README: "Figures on a GPU")
    python scripts/gpu_check.py --dry-run --out <folder>   # the same stages on the CPU, tiny

Each stage runs in its own process under its own time limit and prints one JSON line per row
as it goes; ``<out>/gpu_check.json`` and ``<out>/gpu_check.md`` are rewritten after every
stage, so a stage cut off at its limit still leaves the rows it finished (and says it was cut).
The budgets sum to 8 minutes on an H100 / H200. Not a test (the dry run is: tests/scripts/).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))


@dataclass(frozen=True)
class Scale:
    """Models, sizes and counts of one run of the check (the GPU's, or the dry run's)."""

    sd: str
    sdxl: str
    resolution: int
    sdxl_resolution: int
    recipe_steps: int  # timed after the first
    eval_prompts: int
    eval_images: int
    eval_steps: int
    memory_steps: int
    low_memory: str  # the switch set standing for configs/low_memory.yaml


GPU = Scale("sd15-random", "sdxl-random", 512, 1024, 10, 25, 4, 50, 3, "all")
DRY = Scale("tiny-sd", "tiny-sdxl", 32, 32, 2, 2, 1, 2, 2, "bf16+checkpointing")
SD_CASES = ("textual_inversion", "custom_diffusion", "dreambooth", "lora", "xti", "visual_encoder")
SDXL_CASES = ("textual_inversion", "custom_diffusion", "dreambooth", "lora")
PAPER_RECIPE_TIME = "about 6 min for 500 steps on 2 RTX 4090s"  # ClassDiffusion's report
# Seconds per stage on a lent GPU (a stage's first step loads and moves its models).
LIMITS = {"build": 100, "recipe": 60, "evaluation": 120, "memory_sd": 100, "memory_sdxl": 100}


def scale_of(dry_run: bool) -> Scale:
    scale = DRY if dry_run else GPU
    if scale.low_memory == "all" and not has_bitsandbytes():
        return Scale(**{**scale.__dict__, "low_memory": "bf16+checkpointing"})
    return scale


def has_bitsandbytes() -> bool:
    try:
        import bitsandbytes  # noqa: F401
    except Exception:  # ImportError, or a build without this machine's CUDA
        return False
    return True


def emit(row: dict[str, Any]) -> None:
    print(json.dumps(row), flush=True)


# ----- the stages (each runs in a child process) ---------------------------------------------
def stage_build(scale: Scale) -> None:
    """Build the random-weight models once, outside the timed stages."""
    from pretrained.resolve import resolve_pretrained

    for name in (scale.sd, scale.sdxl):
        start = time.perf_counter()
        resolve_pretrained(name)
        emit({"stage": "build", "model": name, "seconds": time.perf_counter() - start})


def stage_recipe(scale: Scale) -> None:
    """ClassDiffusion's recipe: Custom Diffusion + SPL, batch 2, at the model's resolution."""
    from benchmark_memory import worker

    row = worker("cd+spl", "plain", scale.resolution, 2, scale.sd, scale.recipe_steps + 1)
    emit({"stage": "recipe", "model": scale.sd, "resolution": scale.resolution, "batch": 2,
          "s_per_step": row["step_s"], "minutes_for_500_steps": row["step_s"] * 500 / 60,
          "peak_mb": row["peak_mb"], "paper": PAPER_RECIPE_TIME})  # fmt: skip


def stage_evaluation(scale: Scale, out: Path) -> None:
    """One subject's DreamBench evaluation: prompts x images, DDIM, CFG 7.5, tiny metric models."""
    import lightning as L
    import torch

    from datamodules.generation_prompts import EvalPrompts
    from datamodules.personalization import PersonalizationDataModule
    from generation.evaluation import EvaluationSettings
    from metrics.settings import MetricSettings
    from models import CustomDiffusion

    prompts = EvalPrompts(images_per_prompt=scale.eval_images, batch_size=4,
                          max_prompts=scale.eval_prompts)  # fmt: skip
    data = PersonalizationDataModule(resolution=scale.resolution, eval_prompts=prompts)
    metrics = MetricSettings(
        clip_model="tiny-clip", dino_model="tiny-dino", blip_model="tiny-blip",
        grounding_dino_model="tiny-grounding-dino", sam_model="tiny-sam", gram_model="tiny-vgg",
    )  # fmt: skip
    folder = out / "evaluation"
    settings = EvaluationSettings(num_inference_steps=scale.eval_steps, guidance_scale=7.5,
                                  output_dir=str(folder), metrics=metrics)  # fmt: skip
    module = CustomDiffusion(pretrained_model_name_or_path=scale.sd, concepts=data.concepts,
                             evaluation=settings)  # fmt: skip
    trainer = L.Trainer(
        accelerator="gpu" if torch.cuda.is_available() else "cpu", devices=1, logger=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    start = time.perf_counter()
    trainer.test(module, datamodule=data)
    total = time.perf_counter() - start
    timings = json.loads((folder / "results.json").read_text()).get("timing", {})
    generation = timings.get("generation_seconds")
    emit({"stage": "evaluation", "model": scale.sd, "prompts": scale.eval_prompts,
          "images_per_prompt": scale.eval_images, "steps": scale.eval_steps,
          "seconds": total, "generation_seconds": generation,
          "generation_share": generation / total if generation else None})  # fmt: skip


def stage_memory(scale: Scale, family: str) -> None:
    """Each baseline at batch 1: plain (fp32) and with the low-memory switches (bf16-mixed)."""
    import gc

    import torch
    from benchmark_memory import worker

    model, side, cases = (
        (scale.sd, scale.resolution, SD_CASES) if family == "sd" else
        (scale.sdxl, scale.sdxl_resolution, SDXL_CASES)
    )  # fmt: skip
    for index, case in enumerate(cases):
        switch_sets = ("plain", scale.low_memory)
        if scale == DRY:  # the dry run proves every case and switch set runs, not each pair
            switch_sets = switch_sets[index % 2 : index % 2 + 1]
        for switches in switch_sets:
            try:
                row = worker(case, switches, side, 1, model, scale.memory_steps)
            except Exception as error:  # an out-of-memory row is a figure too
                row = {"case": case, "switches": switches, "error": str(error).splitlines()[0]}
            emit({"stage": f"memory_{family}", "model": model, "resolution": side, **row})
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()


# ----- the parent: stages under their limits, files after each -------------------------------
def environment() -> dict[str, Any]:
    import torch

    cuda = torch.cuda.is_available()
    cpu = f"CPU ({platform.processor() or platform.machine()})"
    return {
        "device": torch.cuda.get_device_name(0) if cuda else cpu,
        "torch": torch.__version__, "cuda": torch.version.cuda if cuda else None,
        "python": platform.python_version(), "bitsandbytes": has_bitsandbytes(),
    }  # fmt: skip


def run_stage(name: str, args: argparse.Namespace, limit: float) -> tuple[list[dict], str]:
    """The stage's rows and how it ended (``ok``, ``cut at N s``, ``failed: ...``)."""
    command = [sys.executable, __file__, "--stage", name, "--out", str(args.out)]
    command += ["--dry-run"] if args.dry_run else []
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=limit, env=env)
        output, status = done.stdout, "ok"
        if done.returncode != 0:
            status = f"failed: {(done.stderr.strip().splitlines() or ['?'])[-1][:200]}"
    except subprocess.TimeoutExpired as cut:
        raw = cut.stdout or b""
        output = raw.decode() if isinstance(raw, bytes) else raw
        status = f"cut at {limit:.0f} s"
    rows = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    return rows, status


def markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    lines = [f"# GPU check ({'dry run, CPU, tiny models' if report['dry_run'] else env['device']})",
             "", f"torch {env['torch']}, CUDA {env['cuda']}, bitsandbytes {env['bitsandbytes']}; "
             f"low-memory switches: {report['scale']['low_memory']}", ""]  # fmt: skip
    for name, stage in report["stages"].items():
        lines += [f"## {name} ({stage['status']}, {stage['seconds']:.0f} s)", ""]
        rows = stage["rows"]
        if rows:
            keys = [k for k in rows[0] if k != "stage"]
            keys += [k for row in rows for k in row if k not in keys and k != "stage"]
            lines += ["| " + " | ".join(keys) + " |", "|" + " --- |" * len(keys)]
            for row in rows:
                cells = [f"{v:.3g}" if isinstance(v, float) else str(v) for v in
                         (row.get(k, "") for k in keys)]  # fmt: skip
                lines.append("| " + " | ".join(cells) + " |")
            lines.append("")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu-check")))
    parser.add_argument("--dry-run", action="store_true", help="the same stages, CPU, tiny models")
    parser.add_argument("--stages", nargs="+", default=list(LIMITS), choices=list(LIMITS))
    parser.add_argument("--stage", choices=list(LIMITS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    scale = scale_of(args.dry_run)
    if args.stage:
        if args.stage == "build":
            stage_build(scale)
        elif args.stage == "recipe":
            stage_recipe(scale)
        elif args.stage == "evaluation":
            stage_evaluation(scale, args.out)
        else:
            stage_memory(scale, args.stage.removeprefix("memory_"))
        return
    report: dict[str, Any] = {"dry_run": args.dry_run, "environment": environment(),
                              "scale": scale.__dict__, "stages": {}}  # fmt: skip
    for name in args.stages:
        limit = LIMITS[name] * (10 if args.dry_run else 1)  # a CPU is slower; the tiny models not
        start = time.perf_counter()
        rows, status = run_stage(name, args, limit)
        report["stages"][name] = {"status": status, "seconds": time.perf_counter() - start,
                                  "limit_s": limit, "rows": rows}  # fmt: skip
        (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2))
        (args.out / "gpu_check.md").write_text(markdown(report))
        print(f"{name}: {status}, {len(rows)} rows", flush=True)


if __name__ == "__main__":
    main()
