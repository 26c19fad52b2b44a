"""configs/xti.yaml and configs/visual_encoder.yaml run with the tiny overlay, in-process."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import REPO_ROOT
from test_cli import assert_complete_run, cli_args, run_folder

from models.visual_encoder import VISUAL_ENCODER_WEIGHTS, load_subject_encoder
from models.xti import XTI_EMBEDS, read_xti
from train import main

pytestmark = [pytest.mark.smoke, pytest.mark.slow]  # every baseline, loss and export once

CHEAP_CALLBACKS = """
trainer:
  callbacks:
    - class_path: callbacks.SampleImages
      init_args: {every_n_steps: 100, num_inference_steps: 2, images_per_prompt: 1}
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {every_n_train_steps: 250, save_last: true}
"""


@pytest.mark.parametrize(
    ("config", "exports"),
    [("xti", {XTI_EMBEDS}), ("visual_encoder", {VISUAL_ENCODER_WEIGHTS})],
)
def test_config_runs_three_steps_with_the_tiny_overlay(
    config: str, exports: set[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO_ROOT)
    # The configs' own callbacks, with 2-step sampling: the default 25 steps of sample grids
    # would be most of this test's time, and they are not what it tests.
    cheap = tmp_path / "cheap_callbacks.yaml"
    cheap.write_text(CHEAP_CALLBACKS)
    cli = main([*cli_args(config, tmp_path), "--config", str(cheap)])
    assert cli.trainer.global_step == 3
    folder = run_folder(tmp_path)
    assert_complete_run(folder, exports)
    export = folder / "export"
    if config == "xti":
        vectors, layers = read_xti(export)
        assert len(layers) == 4 and vectors["<v1>"].shape == (4, 1, 32)
    else:
        assert len(cli.datamodule.images) == 3  # several subjects under one token
        assert cli.datamodule.concepts[0].token == "<v1>" and len(cli.datamodule.concepts) == 1
        encoder, token = load_subject_encoder(export)
        vectors = encoder.embed_subject(cli.datamodule.images[1])
        assert token == "<v1>" and vectors.shape == (4, 32) and torch.isfinite(vectors).all()
