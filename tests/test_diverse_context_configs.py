"""The diverse-context configs: the contextualizer's pretraining run exports to the default
place, after which every MLM config runs with the tiny overlay and no further argument."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import REPO_ROOT
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_cli import cli_args, run_folder

from callbacks.sample_images import SampleImages
from components.contextualizer.store import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    default_contextualizer_dir,
)
from pretrained.tiny_sd import ensure_tiny_pipeline
from train import main

pytestmark = [pytest.mark.smoke, pytest.mark.slow]  # every baseline, loss and export once

MLM_CONFIGS = sorted(
    p.stem
    for p in (REPO_ROOT / "configs" / "diverse_context").glob("*.yaml")
    if p.stem != "contextualizer"
)


def fresh_cache(root: Path) -> Path:
    """An empty PERSONALIZE_CACHE that shares the session's tiny pipeline (no rebuild)."""
    cache = root / "cache"
    cache.mkdir()
    tiny = ensure_tiny_pipeline()
    (cache / tiny.name).symlink_to(tiny, target_is_directory=True)
    return cache


@pytest.fixture(scope="module")
def pretrained_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Runs the contextualizer config with the tiny overlay in a fresh cache, kept set."""
    root = tmp_path_factory.mktemp("diverse-context")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(REPO_ROOT)
        patch.setenv("PERSONALIZE_CACHE", str(fresh_cache(root)))
        assert not default_contextualizer_dir("tiny-sd").exists()
        cli = main(cli_args("diverse_context/contextualizer", root / "run"))
        assert cli.trainer.global_step == 3
        yield root


def test_contextualizer_run_exports_to_the_default_place(pretrained_cache: Path) -> None:
    folder = default_contextualizer_dir("tiny-sd")
    assert folder.is_relative_to(pretrained_cache)
    assert {p.name for p in folder.iterdir()} == {WEIGHTS_FILE, CONFIG_FILE}
    run = run_folder(pretrained_cache / "run")
    assert {p.name for p in (run / "export").iterdir() if p.is_file()} == {
        WEIGHTS_FILE,
        CONFIG_FILE,
        "export.json",  # the export's manifest (exports/manifest.py)
    }
    events = EventAccumulator(str(run))
    events.Reload()
    assert "train/loss/mlm" in events.Tags()["scalars"]


@pytest.mark.parametrize("config", MLM_CONFIGS)
def test_mlm_config_runs_after_the_pretraining_with_no_further_argument(
    config: str, pretrained_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO_ROOT)
    # Sample grids are most of a tiny run's time and test_cli.py covers them.
    monkeypatch.setattr(SampleImages, "_log_samples", lambda self, *args: None)
    cli = main(cli_args(f"diverse_context/{config}", tmp_path))
    assert cli.trainer.global_step == 3
    assert [r.name for r in cli.model.regularizers] == ["mlm"]
    events = EventAccumulator(str(run_folder(tmp_path)))
    events.Reload()
    assert {"train/loss/mlm", "train/loss/denoise", "train/loss"} <= set(events.Tags()["scalars"])


def test_mlm_config_without_pretraining_names_the_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO_ROOT)
    monkeypatch.setenv("PERSONALIZE_CACHE", str(fresh_cache(tmp_path)))
    with pytest.raises(FileNotFoundError, match="contextualizer.yaml --config configs/tiny.yaml"):
        main(cli_args("diverse_context/custom_diffusion", tmp_path / "run"))
    assert not list(tmp_path.rglob("*.ckpt"))
