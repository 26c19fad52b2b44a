"""Every output follows --trainer.default_root_dir, and every run shows a step progress bar."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from helpers import REPO_ROOT

from callbacks.progress import StepProgressBar
from train import DEFAULT_ROOT_DIR, main


def fit_args(root: Path | None, *extra: str) -> list[str]:
    args = [
        "fit",
        "--config", str(REPO_ROOT / "configs" / "custom_diffusion.yaml"),
        "--config", str(REPO_ROOT / "configs" / "tiny.yaml"),
        "--trainer.max_steps", "3", "--trainer.callbacks=[]",
    ]  # fmt: skip
    if root is not None:
        args += ["--trainer.default_root_dir", str(root)]
    return [*args, *extra]


def test_default_root_dir_moves_every_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    root = tmp_path / "elsewhere"
    cli = main(fit_args(root))  # the config names no logger folder
    run = Path(cli.trainer.log_dir)
    assert run.parent.parent == root and run.parent.name == "custom_diffusion"
    assert list(run.glob("events.out.tfevents*")) and (run / "config.yaml").is_file()
    assert list((run / "checkpoints").glob("*.ckpt"))
    assert (run / "export" / "pytorch_custom_diffusion_weights.safetensors").is_file()
    assert not list(cwd.iterdir())  # nothing went to the working folder


def test_the_configs_root_dir_else_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cli = main(fit_args(None, "--trainer.max_steps", "1"))
    assert Path(cli.trainer.log_dir).parent.parent.resolve() == tmp_path / "runs/custom_diffusion"
    cli = main(fit_args(None, "--trainer.max_steps", "1", "--trainer.default_root_dir", "null"))
    assert Path(cli.trainer.log_dir).parent.parent.resolve() == tmp_path / DEFAULT_ROOT_DIR


def test_an_explicit_logger_folder_still_wins(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    cli = main(fit_args(tmp_path / "root", "--trainer.logger.init_args.save_dir", str(logs)))
    assert Path(cli.trainer.log_dir).parent.parent == logs


@pytest.mark.slow
def test_the_progress_bar_counts_the_runs_steps(tmp_path: Path) -> None:
    cli = main(fit_args(tmp_path))
    bar = cli.trainer.progress_bar_callback
    assert isinstance(bar, StepProgressBar)
    assert bar.train_progress_bar.total == 3 and bar.train_progress_bar.n == 3
    assert "v_num" not in bar.get_metrics(cli.trainer, cli.model)
    assert "train/loss" in bar.get_metrics(cli.trainer, cli.model)
    # Bounded by epochs instead: epochs x optimizer steps an epoch (10 batches of 2, 2 a step).
    cli = main(
        fit_args(
            tmp_path, "--trainer.max_steps", "-1", "--trainer.max_epochs", "1",
            "--trainer.accumulate_grad_batches", "2",
        )
    )  # fmt: skip
    assert cli.trainer.progress_bar_callback.total_steps(cli.trainer) == 5
    cli.trainer.fit_loop.max_epochs = -1
    assert math.isinf(cli.trainer.progress_bar_callback.total_steps(cli.trainer))


def test_no_bar_when_turned_off(tmp_path: Path) -> None:
    cli = main(fit_args(tmp_path, "--trainer.enable_progress_bar", "false"))
    assert cli.trainer.progress_bar_callback is None
