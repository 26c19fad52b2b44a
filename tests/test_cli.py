"""The command line: configs, the quickstart, print_config, validate, and 2-process DDP."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import REPO_ROOT
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from exports.manifest import MANIFEST
from train import main

CUSTOM_DIFFUSION_EXPORTS = {"pytorch_custom_diffusion_weights.safetensors", "<v1>.safetensors"}


def run_folder(root: Path) -> Path:
    """The single TensorBoard version folder under `root`."""
    folders = [p.parent for p in root.rglob("config.yaml")]
    assert len(folders) == 1, folders
    return folders[0]


def assert_complete_run(folder: Path, exports: set[str]) -> None:
    """Events with train/loss and a samples grid, config.yaml, a checkpoint, the exports and
    their export.json."""
    events = EventAccumulator(str(folder))
    events.Reload()
    assert "train/loss" in events.Tags()["scalars"]
    assert "samples" in events.Tags()["images"]
    assert (folder / "config.yaml").exists()
    assert list((folder / "checkpoints").glob("*.ckpt"))
    assert {p.name for p in (folder / "export").iterdir() if p.is_file()} == {*exports, MANIFEST}


def cli_args(config: str, root: Path, steps: int = 3) -> list[str]:
    return [
        "fit",
        "--config", f"configs/{config}.yaml",
        "--config", "configs/tiny.yaml",
        "--trainer.default_root_dir", str(root),
        "--trainer.logger.init_args.save_dir", str(root),
        "--trainer.max_steps", str(steps),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("config", "exports"),
    [
        ("textual_inversion", {"learned_embeds.safetensors"}),
        ("custom_diffusion", CUSTOM_DIFFUSION_EXPORTS),
    ],
)
@pytest.mark.smoke
def test_fit_in_process_with_the_tiny_overlay(
    config: str, exports: set[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO_ROOT)
    main(cli_args(config, tmp_path))
    assert_complete_run(run_folder(tmp_path), exports)


def test_print_config_round_trips(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(REPO_ROOT)
    with pytest.raises(SystemExit):
        main(["fit", "--config", "configs/custom_diffusion.yaml", "--print_config"])
    printed = capsys.readouterr().out
    saved = tmp_path / "printed.yaml"
    saved.write_text(printed)
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(saved), "--print_config"])
    again = capsys.readouterr().out
    assert yaml.safe_load(again) == yaml.safe_load(printed)
    config = yaml.safe_load(printed)
    assert config["model"]["class_path"] == "models.CustomDiffusion"
    assert config["model"]["init_args"]["optimizer"]["init_args"]["lr"] == 1e-5
    assert config["data"]["init_args"]["rescale_augmentation"] is True
    assert "concepts" not in config["model"]["init_args"]  # linked from the DataModule


def test_validate_subcommand_reports_the_denoising_loss(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO_ROOT)
    args = cli_args("textual_inversion", tmp_path)[1:]
    cli = main(["validate", *args, "--trainer.limit_val_batches", "2"])
    assert "val/loss" in cli.trainer.callback_metrics


def test_bad_image_folder_fails_before_any_model_is_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO_ROOT)
    args = cli_args("custom_diffusion", tmp_path)
    args += ["--data.init_args.instance_data_dir", str(tmp_path / "missing")]
    args += ["--data.init_args.class_word", "dog"]
    # jsonargparse may wrap the DataModule's error in its own; the message is kept.
    with pytest.raises((FileNotFoundError, ValueError), match="missing' does not exist"):
        main(args)
    assert not list(tmp_path.rglob("*.ckpt"))


def run_script(args: list[str], timeout: int) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run(
        [sys.executable, "train.py", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.slow
def test_quickstart_under_two_process_ddp_writes_one_set_of_exports(tmp_path: Path) -> None:
    result = run_script(
        [
            "fit", "--config", "configs/quickstart.yaml",
            "--trainer.accelerator", "cpu", "--trainer.devices", "2",
            "--trainer.strategy", "ddp", "--trainer.max_steps", "6",
            "--trainer.default_root_dir", str(tmp_path),
            "--trainer.logger.init_args.save_dir", str(tmp_path),
        ],
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "GLOBAL_RANK: 1" in result.stderr + result.stdout
    folder = run_folder(tmp_path)
    assert_complete_run(folder, CUSTOM_DIFFUSION_EXPORTS)
    # Rank zero alone says where the run went.
    assert result.stdout.count(f"done: 6 steps; run folder {folder}") == 1
    assert len(list(tmp_path.rglob("events.out.tfevents*"))) == 1
