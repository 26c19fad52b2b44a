"""Wall time of the README's quickstart, alone and beside one other CPU-bound job.

    python scripts/benchmark_quickstart.py [--runs 3] [--with-load] [--threads N]

Each run is a fresh ``python train.py fit --config configs/quickstart.yaml`` (imports, the
tiny pipeline from its cache, 40 steps, callbacks, checkpoints, export) into a temporary
folder. ``--with-load`` keeps one busy process (a pure-Python loop: one core's worth of work)
running during the runs, as a second job on a shared machine would. ``--threads`` sets
PERSONALIZE_NUM_THREADS for the runs (train.py's torch thread count). Prints each run, then the
median and the spread. Not a test: CI does not run it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
BUSY_LOOP = "while True:\n    pass\n"


def quickstart_seconds(threads: int | None) -> float:
    """One quickstart run's wall time in seconds (fails loudly if the run fails)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    if threads is not None:
        env["PERSONALIZE_NUM_THREADS"] = str(threads)
    with tempfile.TemporaryDirectory() as root:
        command = [
            sys.executable, "train.py", "fit", "--config", "configs/quickstart.yaml",
            "--trainer.default_root_dir", root, "--trainer.enable_progress_bar", "false",
        ]  # fmt: skip
        start = time.perf_counter()
        result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"error: the quickstart failed:\n{result.stderr[-3000:]}")
    return seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--with-load", action="store_true", help="one busy process beside")
    parser.add_argument("--threads", type=int, default=None, help="torch threads of the runs")
    args = parser.parse_args(argv)
    load = subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) if args.with_load else None
    try:
        times = []
        for index in range(args.runs):
            times.append(quickstart_seconds(args.threads))
            print(f"run {index + 1}: {times[-1]:.1f} s", flush=True)
    finally:
        if load is not None:
            load.kill()
    setting = f"threads={args.threads or 'default'}, {'with' if args.with_load else 'no'} load"
    print(
        f"quickstart ({setting}): median {statistics.median(times):.1f} s, "
        f"min {min(times):.1f} s, max {max(times):.1f} s over {len(times)} runs"
    )


if __name__ == "__main__":
    main()
