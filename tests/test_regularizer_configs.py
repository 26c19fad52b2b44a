"""The ClassDiffusion, ACCORD and SuDe configs run 3 steps on the tiny overlay and log losses."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import REPO_ROOT
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_cli import cli_args, run_folder

from callbacks.sample_images import SampleImages
from train import main

pytestmark = [pytest.mark.smoke, pytest.mark.slow]  # every baseline, loss and export once

CONFIGS = {
    "classdiffusion/custom_diffusion": {"spl"},
    "accord/custom_diffusion": {"dd", "pd"},
    "accord/dreambooth": {"dd"},
    "accord/lora": {"dd"},
    "accord/visual_encoder": {"dd", "pd"},
    "sude/dreambooth": {"sude"},
}


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_config_runs_with_the_tiny_overlay(
    config: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO_ROOT)
    # Sample grids are most of a tiny run's time and test_cli.py covers them: count the calls.
    sampled = []
    monkeypatch.setattr(SampleImages, "_log_samples", lambda self, *args: sampled.append(1))
    cli = main(cli_args(config, tmp_path))
    assert sampled  # the config's sample callback is wired
    assert cli.trainer.global_step == 3
    assert sorted(r.name for r in cli.model.regularizers) == sorted(CONFIGS[config])
    events = EventAccumulator(str(run_folder(tmp_path)))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {f"train/loss/{name}" for name in CONFIGS[config]} <= scalars
    assert {"train/loss", "train/loss/denoise"} <= scalars
