"""Plan the (method, subject) pairs, run those not finished yet, then write the table.

Serial on one device (one pair at a time, each in its own process, or all in this process with
``--in-process``); with ``--gpus 0,1,...`` one pair per GPU at a time (CUDA_VISIBLE_DEVICES).
A pair counts as finished when its results.json exists, so a second call only runs what is
missing; a pair that fails is reported and left for the next call.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections import deque
from pathlib import Path

from benchmark.pair import Method, parse_method, results_file, run_folder, run_pair, worker_command
from benchmark.subjects import Subject, dreambench_subjects, parse_subject
from benchmark.table import write_table

REPO_ROOT = Path(__file__).resolve().parents[1]
Pair = tuple[Method, Subject]


def plan(
    methods: list[Method], subjects: list[Subject], output: Path
) -> tuple[list[Pair], list[Pair]]:
    """(pairs still to run, pairs already finished)."""
    names = [m.name for m in methods]
    if len(set(names)) != len(names):
        raise ValueError(f"Method names repeat ({names}); name them: --methods NAME=CONFIG ...")
    subject_names = [s.name for s in subjects]
    if len(set(subject_names)) != len(subject_names):
        raise ValueError(f"Subject names repeat ({subject_names}); name them: FOLDER:CLASS:NAME.")
    pairs = [(m, s) for m in methods for s in subjects]
    done = [p for p in pairs if results_file(output, *p).is_file()]
    return [p for p in pairs if p not in done], done


def _run_in_process(
    pairs: list[Pair], output: Path, configs: list[Path], overrides: list[str]
) -> list[Pair]:
    failed = []
    for method, subject in pairs:
        print(f"[benchmark] {method.name} on {subject.name}", flush=True)
        try:
            run_pair(method, subject, output, configs, overrides)
        except Exception as error:  # noqa: BLE001 - one failed pair must not stop the others
            print(f"[benchmark] FAILED {method.name} on {subject.name}: {error!r}", flush=True)
            failed.append((method, subject))
    return failed


def _run_workers(
    pairs: list[Pair],
    output: Path,
    configs: list[Path],
    overrides: list[str],
    gpus: list[str | None],
) -> list[Pair]:
    """One worker process per pair, at most one per GPU slot at a time."""
    queue, running, failed = deque(pairs), {}, []
    while queue or running:
        for slot in gpus:
            if slot not in running and queue:
                method, subject = queue.popleft()
                folder = run_folder(output, method, subject)
                folder.mkdir(parents=True, exist_ok=True)
                env = dict(os.environ)
                if slot is not None:
                    env["CUDA_VISIBLE_DEVICES"] = slot
                log = (folder / "worker.log").open("w")
                command = [
                    sys.executable,
                    *worker_command(method, subject, output, configs, overrides),
                ]
                print(f"[benchmark] {method.name} on {subject.name} (gpu {slot})", flush=True)
                process = subprocess.Popen(
                    command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
                )
                running[slot] = (process, (method, subject), log)
        for slot, (process, pair, log) in list(running.items()):
            if process.poll() is not None:
                log.close()
                del running[slot]
                if process.returncode != 0:
                    print(f"[benchmark] FAILED {pair[0].name} on {pair[1].name}: see "
                          f"{run_folder(output, *pair) / 'worker.log'}", flush=True)  # fmt: skip
                    failed.append(pair)
        time.sleep(0.2)
    return failed


def run_benchmark(
    methods: list[Method],
    subjects: list[Subject],
    output: Path,
    configs: list[Path] | None = None,
    overrides: list[str] | None = None,
    gpus: list[str] | None = None,
    in_process: bool = False,
) -> dict[str, list[Pair]]:
    """Run every unfinished pair and write the table; returns ran / skipped / failed pairs."""
    configs, overrides = list(configs or []), list(overrides or [])
    todo, done = plan(methods, subjects, output)
    for method, subject in done:
        print(f"[benchmark] skip {method.name} on {subject.name}: results.json exists", flush=True)
    if in_process:
        failed = _run_in_process(todo, output, configs, overrides)
    else:
        failed = _run_workers(todo, output, configs, overrides, list(gpus) if gpus else [None])
    tables = write_table(output, methods, subjects)
    print(f"[benchmark] table: {tables[0]}", flush=True)
    return {"ran": [p for p in todo if p not in failed], "skipped": done, "failed": failed}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", required=True, help="CONFIG or NAME=CONFIG each")
    parser.add_argument("--subjects", nargs="*", default=[], help="FOLDER:CLASS_WORD[:NAME] each")
    parser.add_argument("--dreambench", type=Path, help="DreamBench root: its subjects join in")
    parser.add_argument("--dreambench-subjects", nargs="*", help="only these DreamBench subjects")
    parser.add_argument("--output", type=Path, default=Path("runs/benchmark"))
    parser.add_argument("--config", action="append", default=[], type=Path, help="extra overlay")
    parser.add_argument("--set", action="append", default=[], dest="overrides", help="KEY=VALUE")
    parser.add_argument("--gpus", help="comma-separated GPU ids: one pair per GPU at a time")
    parser.add_argument("--in-process", action="store_true", help="serial, in this process")
    args = parser.parse_args(argv)
    subjects = [parse_subject(spec) for spec in args.subjects]
    if args.dreambench:
        subjects += dreambench_subjects(args.dreambench, args.dreambench_subjects)
    if not subjects:
        parser.error("give --subjects FOLDER:CLASS ... and/or --dreambench ROOT")
    outcome = run_benchmark(
        [parse_method(spec) for spec in args.methods], subjects, args.output, args.config,
        args.overrides, args.gpus.split(",") if args.gpus else None, args.in_process,
    )  # fmt: skip
    return 1 if outcome["failed"] else 0
