"""A run killed with SIGKILL (no handler runs: the OOM killer, a lost node) resumes from its
``last.ckpt`` and ends bitwise equal to a run that was never stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
STEPS = 8
# Killed once last.ckpt holds at least this many steps: with 10 samples (5 toy photos x 2
# repeats) at batch 2 that is the epoch's last batch, the checkpoint that resumed wrongly once.
KILL_AFTER_STEP = 5


def overlay(root: Path, slow: bool) -> Path:
    """Checkpoint every step into root/ckpt; ``slow``: sleep after each step, to kill it."""
    callbacks = [
        "  - class_path: lightning.pytorch.callbacks.ModelCheckpoint",
        "    init_args:",
        f"      dirpath: {root / 'ckpt'}",
        "      every_n_train_steps: 1",
        "      save_last: true",
    ]
    if slow:
        callbacks += ["  - class_path: helpers.SlowSteps", "    init_args: {seconds: 0.5}"]
    path = root / "overlay.yaml"
    root.mkdir(parents=True)
    path.write_text("trainer:\n  callbacks:\n" + "\n".join(callbacks) + "\n")
    return path


def command(root: Path, *extra: str) -> list[str]:
    """The run in ``root`` (its overlay written there first)."""
    return [
        sys.executable, "train.py", "fit",
        "--config", "configs/custom_diffusion.yaml", "--config", "configs/tiny.yaml",
        "--config", str(root / "overlay.yaml"),
        "--trainer.max_steps", str(STEPS), "--trainer.enable_progress_bar", "false",
        "--trainer.default_root_dir", str(root), "--trainer.logger", "false",
        "--data.init_args.repeats", "2",
        *extra,
    ]  # fmt: skip


def environment() -> dict[str, str]:
    tests = str(REPO_ROOT / "tests")  # helpers.SlowSteps
    path = os.pathsep.join(p for p in (tests, os.environ.get("PYTHONPATH")) if p)
    return dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=path)


def steps_in(checkpoint: Path) -> int:
    try:
        return int(torch.load(checkpoint, map_location="cpu", weights_only=True)["global_step"])
    except (FileNotFoundError, RuntimeError, EOFError):
        return -1


def trained_state(checkpoint: Path) -> dict[str, torch.Tensor]:
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert state["global_step"] == STEPS
    return state["state_dict"]


@pytest.mark.slow
def test_a_run_killed_with_sigkill_resumes_bitwise_equal(tmp_path: Path) -> None:
    straight = tmp_path / "straight"
    overlay(straight, slow=False)
    done = subprocess.run(
        command(straight), cwd=REPO_ROOT, env=environment(),
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]

    killed = tmp_path / "killed"
    last = killed / "ckpt" / "last.ckpt"
    overlay(killed, slow=True)  # the resumed run sleeps too: it changes no number
    process = subprocess.Popen(
        command(killed), cwd=REPO_ROOT, env=environment(),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 240
    while steps_in(last) < KILL_AFTER_STEP and process.poll() is None:
        assert time.monotonic() < deadline, "the run never reached the step to kill it at"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=60) == -signal.SIGKILL  # it was killed, it did not finish
    reached = steps_in(last)
    assert KILL_AFTER_STEP <= reached < STEPS

    resumed = subprocess.run(
        command(killed, "--ckpt_path", str(last)), cwd=REPO_ROOT,
        env=environment(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    expected, got = trained_state(straight / "ckpt" / "last.ckpt"), trained_state(last)
    assert expected.keys() == got.keys() and expected
    for key in expected:
        assert torch.equal(expected[key], got[key]), f"{key} differs after resuming at {reached}"
    print(f"killed with last.ckpt at step {reached}")
