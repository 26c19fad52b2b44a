"""Run worker commands as Ray tasks: locally (``ray.init()``) or on a cluster (``--address``).

Each command is one task that asks Ray for its GPUs and CPUs and runs the command as a child
process with its output in a log file; Ray places it on a node with those resources free and
sets ``CUDA_VISIBLE_DEVICES`` to the GPUs it was given, which the child inherits. On a cluster,
the repository, its virtual environment, the photos and the output folder must be at the same
path on every node (a shared file system, as SLURM clusters and most Kubernetes set-ups have).
"""

from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.threads import THREADS_VARIABLE

RAY_MISSING = (
    "the benchmark runs its pairs on Ray, which is not installed: pip install -e '.[benchmark]' "
    "(or pass --in-process to run them one after the other in this process)"
)


@dataclass(frozen=True)
class Command:
    """A process to run: its arguments, working folder and log file."""

    argv: list[str]
    cwd: Path
    log: Path


@dataclass(frozen=True)
class PoolSettings:
    """Where the tasks run and what each asks for."""

    address: str | None = None  # None: a local Ray instance started (and stopped) here
    num_cpus: int | None = None  # local instance only: CPUs it may use (None: all)
    gpus: list[str] | None = None  # local instance only: these GPU ids (None: all)
    gpus_per_task: float | None = None  # None: 1 where the cluster has GPUs, else 0
    cpus_per_task: float = 1.0


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ImportError(RAY_MISSING) from None
    return ray


def _run_logged(argv: list[str], cwd: str, log: str, env: dict[str, str]) -> int:
    """Inside the task: the command with stdout and stderr in its log; its exit code."""
    Path(log).parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as handle:
        completed = subprocess.run(
            argv, cwd=cwd, env={**os.environ, **env}, stdout=handle, stderr=subprocess.STDOUT
        )
    return completed.returncode


def _start(ray: Any, settings: PoolSettings) -> bool:
    """Connect to the cluster or start a local instance; True when this call started it."""
    if ray.is_initialized():
        return False
    options: dict[str, Any] = {"log_to_driver": False, "configure_logging": False}
    if settings.address is not None:
        ray.init(address=settings.address, **options)
        return True
    if settings.gpus is not None:  # a local instance sees exactly these GPUs
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(settings.gpus)
    ray.init(num_cpus=settings.num_cpus, include_dashboard=False, **options)
    return True


def run_all(commands: dict[str, Command], settings: PoolSettings) -> dict[str, str | None]:
    """Run every command (keyed by a label) as a Ray task; per label None when it exited 0,
    else why it failed (the exit code, or Ray's error when the task was lost). Each is
    reported as it finishes, a failure with the end of its log."""
    ray = _import_ray()
    # ray.init installs its own SIGTERM handler and shutdown leaves it: put ours back after.
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    started = _start(ray, settings)
    try:
        gpus = settings.gpus_per_task
        if gpus is None:
            gpus = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
        task = ray.remote(num_gpus=gpus, num_cpus=settings.cpus_per_task)(_run_logged)
        # Each child uses the CPUs its task holds, so tasks side by side do not oversubscribe.
        env = {THREADS_VARIABLE: str(max(1, int(settings.cpus_per_task)))}
        pending = {
            task.remote(c.argv, str(c.cwd), str(c.log), env): key for key, c in commands.items()
        }
        outcome: dict[str, str | None] = {}
        while pending:
            (ready,), _ = ray.wait(list(pending), num_returns=1)
            key = pending.pop(ready)
            try:
                code = ray.get(ready)
                outcome[key] = None if code == 0 else f"exit code {code}"
            except Exception as error:  # noqa: BLE001 - a lost task fails its pair only
                outcome[key] = f"{type(error).__name__}: {error}".splitlines()[0]
            report(key, outcome[key], commands[key])
        return outcome
    finally:
        if started:
            ray.shutdown()
            for sig, handler in handlers.items():
                signal.signal(sig, handler)


def report(label: str, failure: str | None, command: Command) -> None:
    """One finished task: done, or FAILED with why, its log file and the log's last lines."""
    if failure is None:
        print(f"[benchmark] done {label}", flush=True)
        return
    log = command.log
    tail = log.read_text(errors="replace").splitlines()[-5:] if log.is_file() else []
    print(f"[benchmark] FAILED {label}: {failure}; log: {log}", flush=True)
    for line in tail:
        print(f"[benchmark]   | {line}", flush=True)
