"""The README's own commands, as written: the quickstart's `fit` (a complete run: events,
samples from step 0, checkpoint, exports, the closing lines), then `test` on its checkpoint
(the README's Evaluate command with <run> filled in), offline."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_cli import CUSTOM_DIFFUSION_EXPORTS, assert_complete_run

REPO_ROOT = Path(__file__).resolve().parents[1]
README = (REPO_ROOT / "README.md").read_text()


def readme_command(pattern: str) -> list[str]:
    """The README's indented command line matching ``pattern``, from ``train.py`` on."""
    for line in README.splitlines():
        if line.startswith("    ") and re.search(pattern, line):
            words = line.split()
            return words[words.index("train.py") :]
    raise AssertionError(f"the README has no command matching {pattern!r}")


def run(args: list[str], root: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    command = [sys.executable, *args, "--trainer.default_root_dir", str(root)]
    return subprocess.run(
        command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600
    )


@pytest.mark.slow
def test_the_quickstart_then_the_evaluate_command(tmp_path: Path) -> None:
    fit = readme_command(r"train\.py fit --config configs/quickstart\.yaml")
    assert fit == ["train.py", "fit", "--config", "configs/quickstart.yaml"]
    done = run(fit, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    (run_folder,) = (tmp_path / "custom_diffusion").iterdir()
    assert_complete_run(run_folder, CUSTOM_DIFFUSION_EXPORTS)
    # No library notices on every run; the end says where the run went.
    output = done.stdout + done.stderr
    assert "litlogger" not in output and "LeafSpec" not in output, output[-3000:]
    assert f"done: 40 steps; run folder {run_folder}" in done.stdout.splitlines()
    assert f"tensorboard --logdir {tmp_path / 'custom_diffusion'}" in done.stdout.splitlines()
    events = EventAccumulator(str(run_folder))
    events.Reload()
    assert [e.step for e in events.Images("samples")][0] == 0  # samples at step 0 too
    evaluate = readme_command(r"train\.py test --ckpt_path <run>/checkpoints/last\.ckpt")
    evaluate = [w.replace("<run>", str(run_folder)) for w in evaluate]
    done = run(evaluate, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (run_folder / "eval" / "test-1" / "results.json").is_file()
    assert sorted(p.name for p in (tmp_path / "custom_diffusion").iterdir()) == [run_folder.name]
