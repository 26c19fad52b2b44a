"""Start-up, step time and peak memory of ``train.py fit`` against a plain example-style loop.

    python scripts/benchmark_startup.py [--runs 3] [--steps 20] [--photos <folder>]

Both run as fresh processes on the same tiny pipeline, photos (DreamBench's backpack by
default) and settings: Custom Diffusion, 32 px, batch 2, AdamW, one thread. Ours is
``configs/custom_diffusion.yaml`` with the tiny overlay, TensorBoard logging and the progress bar,
and no analysis callbacks or checkpoints (the reference has neither); the reference is
``scripts/reference_custom_diffusion.py`` (argparse + accelerate + diffusers, the structure of
diffusers' example scripts). Start-up is the wall time from launching the process to the end of
its first training step; the step time is the median gap between later steps; peak memory is
the process's peak RSS. Prints each run and the medians. Not a test: CI does not run it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PHOTOS = REPO_ROOT.parent / "shared" / "data" / "dreambench" / "backpack"
CLOCK_ENV = "PERSONALIZE_STEP_CLOCK"


class StepClock(L.Callback):
    """Writes every training step's end time to $PERSONALIZE_STEP_CLOCK (ours' side)."""

    def __init__(self) -> None:
        self.step_ends: list[float] = []

    def on_train_batch_end(self, *args: Any) -> None:
        self.step_ends.append(time.time())
        Path(os.environ[CLOCK_ENV]).write_text(json.dumps({"step_ends": self.step_ends}))


@dataclass
class Measurement:
    startup_s: float
    step_s: float
    peak_rss_mb: float


def measure(command: list[str], clock: Path, env: dict[str, str]) -> Measurement:
    """Run `command`, wait for it, and read its clock file and its peak RSS."""
    start = time.time()
    process = subprocess.Popen(
        command, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    assert process.stderr is not None
    stderr = process.stderr.read().decode(errors="replace")
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"error: {' '.join(command[:3])} failed:\n{stderr[-3000:]}")
    ends = json.loads(clock.read_text())["step_ends"]
    gaps = [b - a for a, b in zip(ends[1:], ends[2:])]  # after the first two steps settle
    return Measurement(ends[0] - start, statistics.median(gaps), usage.ru_maxrss / 1024)


def recipe_without_callbacks(folder: Path) -> Path:
    """configs/custom_diffusion.yaml with its callback list emptied: the reference has none,
    and a listed callback's module is imported when the config is read."""
    config = yaml.safe_load((REPO_ROOT / "configs" / "custom_diffusion.yaml").read_text())
    config["trainer"]["callbacks"] = [{"class_path": "scripts.benchmark_startup.StepClock"}]
    path = folder / "custom_diffusion_no_callbacks.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def ours(recipe: Path, photos: Path, class_word: str, steps: int, folder: Path) -> list[str]:
    return [
        sys.executable, "train.py", "fit", "--config", str(recipe), "--config", "configs/tiny.yaml",
        "--data.init_args.instance_data_dir", str(photos),
        "--data.init_args.class_word", class_word,
        "--data.init_args.flip_probability", "0.5",
        "--data.init_args.rescale_augmentation", "false",
        "--trainer.max_steps", str(steps),
        "--trainer.default_root_dir", str(folder),
        "--trainer.enable_checkpointing", "false",
        "--trainer.log_every_n_steps", "5",
    ]  # fmt: skip


def reference(model: str, photos: Path, class_word: str, steps: int, folder: Path) -> list[str]:
    return [
        sys.executable, "scripts/reference_custom_diffusion.py",
        "--pretrained_model_name_or_path", model, "--instance_data_dir", str(photos),
        "--class_word", class_word, "--max_train_steps", str(steps),
        "--output_dir", str(folder), "--clock", os.environ[CLOCK_ENV],
    ]  # fmt: skip


def summary(name: str, runs: list[Measurement]) -> Measurement:
    median = Measurement(
        statistics.median(r.startup_s for r in runs),
        statistics.median(r.step_s for r in runs),
        statistics.median(r.peak_rss_mb for r in runs),
    )
    spread = f"{min(r.startup_s for r in runs):.1f}-{max(r.startup_s for r in runs):.1f}"
    print(
        f"{name:<10} start-up {median.startup_s:5.1f} s ({spread}), "
        f"step {median.step_s * 1e3:6.1f} ms, peak RSS {median.peak_rss_mb:6.0f} MB"
    )
    return median


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--photos", type=Path, default=DEFAULT_PHOTOS)
    parser.add_argument("--class-word", default="backpack")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO_ROOT))
    from pretrained.tiny_sd import ensure_tiny_pipeline  # builds the cache once, outside timing

    model = str(ensure_tiny_pipeline())
    results: dict[str, list[Measurement]] = {"ours": [], "reference": []}
    with tempfile.TemporaryDirectory() as root:
        clock = Path(root) / "clock.json"
        env = dict(os.environ, HF_HUB_OFFLINE="1", PERSONALIZE_NUM_THREADS="1")
        env.update({CLOCK_ENV: str(clock), "OMP_NUM_THREADS": "1"})
        # As on a user's machine: compiled modules cached (a sandbox may turn that off, and
        # then every start compiles the project's ~100 modules again).
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        os.environ[CLOCK_ENV] = str(clock)
        recipe = recipe_without_callbacks(Path(root))
        for index in range(args.runs):  # alternate, so drift in the machine hits both alike
            folder = Path(root) / f"run{index}"
            commands = {
                "ours": ours(recipe, args.photos, args.class_word, args.steps, folder / "ours"),
                "reference": reference(
                    model, args.photos, args.class_word, args.steps, folder / "ref"
                ),
            }
            for name, command in commands.items():
                results[name].append(measure(command, clock, env))
                run = results[name][-1]
                print(
                    f"run {index + 1} {name:<10} start-up {run.startup_s:5.1f} s, "
                    f"step {run.step_s * 1e3:6.1f} ms, peak RSS {run.peak_rss_mb:6.0f} MB",
                    flush=True,
                )
    print(f"medians over {args.runs} runs:")
    mine, theirs = (summary(name, runs) for name, runs in results.items())
    print(
        f"ours / reference: start-up {mine.startup_s / theirs.startup_s:.2f}x, "
        f"step {mine.step_s / theirs.step_s:.2f}x, "
        f"peak RSS {mine.peak_rss_mb / theirs.peak_rss_mb:.2f}x"
    )


if __name__ == "__main__":
    main()
