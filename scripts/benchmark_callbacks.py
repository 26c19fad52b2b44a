"""Cost of the analysis callbacks (SemanticDrift, AttentionMaps, TextSemantics) in a real run.

    .venv/bin/python scripts/benchmark_callbacks.py [--runs 5] [--config configs/quickstart.yaml]

Runs the config's training command ``--runs`` times with its analysis callbacks and as often
without them (a copy of the config with those callbacks taken out), alternating which goes
first, each in its own process as a user runs it. Each child times its fit loop and reads
the time each analysis callback spent measuring (``AnalysisCallback.seconds``, taken inside
the callback, so the figure does not depend on how noisy the machine's wall clock is); the
parent times the whole command (start-up, fit, exports). Printed: the callbacks' seconds,
their share of the whole run and of the fit loop alone, and as a cross-check the median
paired wall-clock difference with / without. Not a test: measured, not asserted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ANALYSIS = {"callbacks.SemanticDrift", "callbacks.AttentionMaps", "callbacks.TextSemantics"}


def without_analysis(config: Path, folder: Path) -> Path:
    """A copy of ``config`` whose trainer has no analysis callbacks."""
    settings = yaml.safe_load(config.read_text())
    callbacks = settings.get("trainer", {}).get("callbacks", [])
    kept = [c for c in callbacks if c.get("class_path") not in ANALYSIS]
    if len(kept) == len(callbacks):
        raise SystemExit(f"{config} has no analysis callback ({sorted(ANALYSIS)}) to measure.")
    settings["trainer"]["callbacks"] = kept
    copy = folder / f"{config.stem}-without-analysis.yaml"
    copy.write_text(yaml.safe_dump(settings, sort_keys=False))
    return copy


def run_child(config: str, root: str) -> None:
    """Child mode: train with ``config`` into ``root``; print one JSON line of timings."""
    import train
    from callbacks.analysis import AnalysisCallback

    args = ["--config", config, "--trainer.default_root_dir", root]
    args += ["--trainer.logger.init_args.save_dir", root]
    cli = train.main(args, run=False)
    start = time.perf_counter()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    fit_seconds = time.perf_counter() - start
    callbacks = [c for c in cli.trainer.callbacks if isinstance(c, AnalysisCallback)]
    print(json.dumps({
        "fit": fit_seconds,
        "callbacks": {type(c).__name__: [c.seconds, len(c.history)] for c in callbacks},
    }))  # fmt: skip


def run(config: Path, folder: Path) -> dict[str, Any]:
    """One training command in its own process: its wall time and the child's report."""
    root = tempfile.mkdtemp(dir=folder)
    command = [sys.executable, __file__, "--child", str(config), "--root", root]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - start
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode or not lines:
        raise SystemExit(f"Training failed ({' '.join(command)}):\n{result.stderr[-3000:]}")
    return {"wall": wall, **json.loads(lines[-1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs with and as many without")
    parser.add_argument("--config", default="configs/quickstart.yaml")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_child(args.child, args.root)
        return
    config = (ROOT / args.config).resolve()
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        bare = without_analysis(config, folder)
        pairs = []
        for index in range(args.runs):
            order = [config, bare] if index % 2 == 0 else [bare, config]
            done = {path: run(path, folder) for path in order}
            pairs.append((done[config], done[bare]))
            with_, without = pairs[-1]
            spent = sum(s for s, _ in with_["callbacks"].values())
            print(
                f"run {index + 1}: with {with_['wall']:.2f} s (fit {with_['fit']:.2f}, callbacks "
                f"{spent:.3f}), without {without['wall']:.2f} s (fit {without['fit']:.2f})"
            )
    names = list(pairs[0][0]["callbacks"])
    per_callback = {n: statistics.median(w["callbacks"][n][0] for w, _ in pairs) for n in names}
    spent = [sum(s for s, _ in w["callbacks"].values()) for w, _ in pairs]
    share_wall = [s / w["wall"] for s, (w, _) in zip(spent, pairs)]
    share_fit = [s / w["fit"] for s, (w, _) in zip(spent, pairs)]
    paired_wall = [(w["wall"] - b["wall"]) / b["wall"] for w, b in pairs]
    paired_fit = [(w["fit"] - b["fit"]) / b["fit"] for w, b in pairs]
    counts = {n: pairs[0][0]["callbacks"][n][1] for n in names}
    print(f"\n{args.config}, {args.runs} runs with and {args.runs} without the analysis callbacks")
    for name in names:
        print(f"  {name:<14} {per_callback[name]:.3f} s median over {counts[name]} measurements")
    print(
        f"callbacks' own time: median {statistics.median(spent):.3f} s = "
        f"{100 * statistics.median(share_wall):.1f}% of the run "
        f"(max {100 * max(share_wall):.1f}%; target <= 5%), "
        f"{100 * statistics.median(share_fit):.1f}% of the fit loop alone"
    )
    print(
        f"wall-clock cross-check, median paired difference: run "
        f"{100 * statistics.median(paired_wall):+.1f}%, fit loop "
        f"{100 * statistics.median(paired_fit):+.1f}%"
    )


if __name__ == "__main__":
    main()
