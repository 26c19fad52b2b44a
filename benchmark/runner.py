"""Plan the (method, subject, seed) pairs, run those not finished yet, then write the table.

Each pair is a Ray task running ``python -m benchmark.pair`` as a process of its own, asking
for one GPU where the cluster has GPUs (``--gpus-per-pair`` to change it, e.g. 0.5 to put two
small runs on a card): a local Ray instance by default (``--gpus 0,1`` limits it to those GPUs,
``--num-cpus`` to that many CPUs), or a running cluster with ``--address``. ``--in-process``
runs the pairs one after the other in this process instead (no Ray). A pair counts as finished
when its results.json exists, so a second call only runs what is missing; a pair that fails is
reported with its log and left for the next call while the others go on.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmark.pair import (
    Method,
    Pair,
    parse_method,
    results_file,
    run_folder,
    run_pair,
    worker_command,
)
from benchmark.ray_pool import Command, PoolSettings, run_all
from benchmark.subjects import (
    Subject,
    dreambench_subjects,
    parse_subject,
    stylebench_subjects,
)
from benchmark.table import write_table

REPO_ROOT = Path(__file__).resolve().parents[1]
WORKER_LOG = "worker.log"


def plan(
    methods: list[Method],
    subjects: list[Subject],
    output: Path,
    seeds: list[int] | None = None,
) -> tuple[list[Pair], list[Pair]]:
    """(pairs still to run, pairs already finished)."""
    names = [m.name for m in methods]
    if len(set(names)) != len(names):
        raise ValueError(f"Method names repeat ({names}); name them: --methods NAME=CONFIG ...")
    subject_names = [s.name for s in subjects]
    if len(set(subject_names)) != len(subject_names):
        raise ValueError(f"Subject names repeat ({subject_names}); name them: FOLDER:CLASS:NAME.")
    if seeds is not None and len(set(seeds)) != len(seeds):
        raise ValueError(f"Seeds repeat ({seeds}); give each once: --seeds 0 1 2.")
    pairs = [Pair(m, s, seed) for m in methods for s in subjects for seed in seeds or [None]]
    done = [p for p in pairs if results_file(output, p).is_file()]
    return [p for p in pairs if p not in done], done


def _run_in_process(
    pairs: list[Pair], output: Path, configs: list[Path], overrides: list[str]
) -> list[Pair]:
    failed = []
    for pair in pairs:
        print(f"[benchmark] {pair.describe()}", flush=True)
        try:
            run_pair(pair, output, configs, overrides)
        except Exception as error:  # noqa: BLE001 - one failed pair must not stop the others
            print(f"[benchmark] FAILED {pair.describe()}: {error!r}", flush=True)
            failed.append(pair)
    return failed


def _run_on_ray(
    pairs: list[Pair],
    output: Path,
    configs: list[Path],
    overrides: list[str],
    settings: PoolSettings,
) -> list[Pair]:
    """Every pair a Ray task; the ones that failed."""
    commands = {
        pair.describe(): Command(
            [sys.executable, *worker_command(pair, output, configs, overrides)],
            REPO_ROOT,
            run_folder(output.resolve(), pair) / WORKER_LOG,
        )
        for pair in pairs
    }
    outcome = run_all(commands, settings)
    return [pair for pair in pairs if outcome[pair.describe()] is not None]


def run_benchmark(
    methods: list[Method],
    subjects: list[Subject],
    output: Path,
    configs: list[Path] | None = None,
    overrides: list[str] | None = None,
    pool: PoolSettings | None = None,
    in_process: bool = False,
    seeds: list[int] | None = None,
) -> dict[str, list[Pair]]:
    """Run every unfinished pair and write the table; returns ran / skipped / failed pairs."""
    configs, overrides = list(configs or []), list(overrides or [])
    todo, done = plan(methods, subjects, output, seeds)
    for pair in done:
        print(f"[benchmark] skip {pair.describe()}: results.json exists", flush=True)
    if not todo:
        failed = []
    elif in_process:
        failed = _run_in_process(todo, output, configs, overrides)
    else:
        failed = _run_on_ray(todo, output, configs, overrides, pool or PoolSettings())
    tables = write_table(output, methods, subjects, seeds)
    print(f"[benchmark] table: {tables[0]}", flush=True)
    return {"ran": [p for p in todo if p not in failed], "skipped": done, "failed": failed}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--methods", nargs="+", required=True,
        help="CONFIG, NAME=CONFIG or NAME=CONFIG+OVERLAY... each",
    )  # fmt: skip
    parser.add_argument("--subjects", nargs="*", default=[], help="FOLDER:CLASS_WORD[:NAME] each")
    parser.add_argument("--dreambench", type=Path, help="DreamBench root: its subjects join in")
    parser.add_argument("--dreambench-subjects", nargs="*", help="only these DreamBench subjects")
    parser.add_argument("--stylebench", type=Path, help="a StyleBench-layout folder: its styles")
    parser.add_argument("--output", type=Path, default=Path("runs/benchmark"))
    parser.add_argument("--config", action="append", default=[], type=Path, help="extra overlay")
    parser.add_argument("--set", action="append", default=[], dest="overrides", help="KEY=VALUE")
    parser.add_argument("--seeds", nargs="+", type=int, help="seeds: a third axis, mean ± std")
    parser.add_argument("--address", help="a running Ray cluster (ray://host:10001 or auto)")
    parser.add_argument("--gpus", help="local Ray only: these GPU ids (comma-separated)")
    parser.add_argument("--num-cpus", type=int, help="local Ray only: the CPUs it may use")
    parser.add_argument("--gpus-per-pair", type=float, help="default: 1 where there are GPUs")
    parser.add_argument("--cpus-per-pair", type=float, default=1.0)
    parser.add_argument("--in-process", action="store_true", help="serial, in this process")
    args = parser.parse_args(argv)
    subjects = [parse_subject(spec) for spec in args.subjects]
    if args.dreambench:
        subjects += dreambench_subjects(args.dreambench, args.dreambench_subjects)
    if args.stylebench:
        subjects += stylebench_subjects(args.stylebench)
    if not subjects:
        parser.error("give --subjects FOLDER:CLASS ..., --dreambench ROOT or --stylebench ROOT")
    pool = PoolSettings(
        address=args.address, num_cpus=args.num_cpus,
        gpus=args.gpus.split(",") if args.gpus else None,
        gpus_per_task=args.gpus_per_pair, cpus_per_task=args.cpus_per_pair,
    )  # fmt: skip
    outcome = run_benchmark(
        [parse_method(spec) for spec in args.methods], subjects, args.output, args.config,
        args.overrides, pool, args.in_process, args.seeds,
    )  # fmt: skip
    return 1 if outcome["failed"] else 0
