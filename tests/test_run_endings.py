"""How a command ends, from the command line: a run stopped by Ctrl-C or SIGTERM saves and
exits with the signal's conventional code (130 / 143), never 0; a finished ``fit`` names its
run folder, export files and TensorBoard command; a non-finite stop's error starts a line of
its own after the progress bar; a run that fails before its first step leaves no folder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO_ROOT

from models.base import PersonalizationModule
from train import run_from_command_line

TINY_TI = ["--config", "configs/textual_inversion.yaml", "--config", "configs/tiny.yaml"]


def signal_overlay(root: Path, signum: int) -> Path:
    """A config adding ``helpers.SignalAt``: the signal arrives during step 1."""
    path = root / "signal.yaml"
    root.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "trainer:\n  callbacks:\n    - class_path: helpers.SignalAt\n"
        f"      init_args: {{signum: {int(signum)}, step: 1}}\n"
    )
    return path


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupted_run_saves_and_exits_with_the_signal_code(
    signum: signal.Signals, code: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO_ROOT)
    monkeypatch.setattr(sys, "argv", sys.argv[:1])  # the command line sets it: put it back
    overlay = signal_overlay(tmp_path, signum)
    argv = ["fit", *TINY_TI, "--config", str(overlay), "--trainer.max_steps", "4",
            "--trainer.default_root_dir", str(tmp_path),
            "--trainer.enable_progress_bar", "false"]  # fmt: skip
    assert run_from_command_line(argv) == code
    (checkpoint,) = tmp_path.rglob("interrupted.ckpt")
    assert (checkpoint.parent.parent / "export" / "step-2" / "learned_embeds.safetensors").is_file()


def test_a_finished_fit_says_where_the_run_went(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(REPO_ROOT)
    monkeypatch.setattr(sys, "argv", sys.argv[:1])
    argv = ["fit", *TINY_TI, "--trainer.max_steps", "2", "--trainer.default_root_dir",
            str(tmp_path), "--trainer.enable_progress_bar", "false"]  # fmt: skip
    assert run_from_command_line(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    (run,) = [p.parent for p in tmp_path.rglob("config.yaml")]
    assert f"done: 2 steps; run folder {run}" in lines
    export = run / "export"
    assert f"export: {export} (a1111/, export.json, learned_embeds.safetensors)" in lines
    (board,) = [line for line in lines if line.startswith("tensorboard --logdir ")]
    assert run.is_relative_to(board.split(" ", 2)[2])


@pytest.mark.slow
def test_the_non_finite_error_starts_its_own_line_after_the_progress_bar(tmp_path: Path) -> None:
    """The bar (stdout) and the error (stderr) share a terminal: one stream here, as there."""
    huge_spl = "[{class_path: losses.spl.SemanticPreservationLoss, init_args: {weight: 1e39}}]"
    argv = ["fit", *TINY_TI, "--trainer.max_steps", "3", "--trainer.default_root_dir",
            str(tmp_path), "--trainer.callbacks", "[]",
            "--model.init_args.regularizers", huge_spl]  # fmt: skip
    done = subprocess.run(
        [sys.executable, "train.py", *argv], cwd=REPO_ROOT, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, timeout=300, env=dict(os.environ, HF_HUB_OFFLINE="1"),
    )  # fmt: skip
    assert done.returncode == 1, done.stdout[-3000:]
    assert "train" in done.stdout  # the bar was drawn
    (line,) = [line for line in done.stdout.split("\n") if "error:" in line]
    assert line.startswith("error: step 0: loss part 'spl'") and "\r" not in line, repr(line)


def test_a_run_that_fails_before_its_first_step_leaves_no_run_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def fail(self: PersonalizationModule) -> None:
        raise ValueError("the module cannot start; fix it.")

    monkeypatch.chdir(REPO_ROOT)
    monkeypatch.setattr(sys, "argv", sys.argv[:1])
    monkeypatch.setattr(PersonalizationModule, "on_train_start", fail)
    earlier = tmp_path / "textual_inversion" / "version_0"
    earlier.mkdir(parents=True)
    (earlier / "config.yaml").write_text("an earlier run's folder: kept\n")
    argv = ["fit", *TINY_TI, "--trainer.max_steps", "2", "--trainer.default_root_dir",
            str(tmp_path), "--trainer.logger.init_args.save_dir", str(tmp_path)]  # fmt: skip
    assert run_from_command_line(argv) == 2
    assert "error: the module cannot start; fix it." in capsys.readouterr().err
    folders = sorted(p.name for p in (tmp_path / "textual_inversion").iterdir())
    assert folders == ["version_0"]  # version_1 was made and removed; the earlier one is kept
