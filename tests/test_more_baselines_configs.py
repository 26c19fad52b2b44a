"""ClassDiffusion's and CLIF's other baselines (NeTI, SVDiff, ProSpect, Mix-of-Show's ED-LoRA)
run through train.py on the tiny overlay with SPL and DDLoss composed, and export."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from helpers import REPO_ROOT
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_cli import cli_args, run_folder
from test_user_errors import assert_one_clear_line

from callbacks.sample_images import SampleImages
from train import main, run_from_command_line

pytestmark = [pytest.mark.smoke, pytest.mark.slow]

# config -> the export file the run must write
CONFIGS = {
    "classdiffusion/neti": "neti_mapper.safetensors",
    "classdiffusion/prospect": "prospect_embeds.safetensors",
}
COMPOSED = (
    "[{class_path: losses.spl.SemanticPreservationLoss, init_args: {weight: 1.0}},"
    " {class_path: losses.dd_loss.DenoisingDecoupleLoss, init_args: {weight: 0.2}}]"
)


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_the_baseline_composes_with_spl_and_ddloss(
    config: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO_ROOT)
    monkeypatch.setattr(SampleImages, "_log_samples", lambda self, *args: None)
    args = [*cli_args(config, tmp_path, steps=2), "--model.init_args.regularizers", COMPOSED]
    cli = main(args)
    assert cli.trainer.global_step == 2
    events = EventAccumulator(str(run_folder(tmp_path)))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"train/loss/denoise", "train/loss/spl", "train/loss/dd"} <= scalars
    exports = list(tmp_path.rglob(CONFIGS[config]))
    assert exports, f"no {CONFIGS[config]} under {tmp_path}"


# config, extra options -> what the one error line must say
BAD_INPUT = {
    "prospect stages": (
        "classdiffusion/prospect",
        ["--model.init_args.num_stages", "1001"],
        "each stage needs at least one",
    ),
    "neti trained tokens": (
        "classdiffusion/neti",
        ["--model.init_args.train_tokens", "true"],
        "set train_tokens: false",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_settings_are_one_clear_line(
    case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    config, extra, expected = BAD_INPUT[case]
    monkeypatch.chdir(REPO_ROOT)
    monkeypatch.setattr(sys, "argv", sys.argv[:1])  # the command line sets it: put it back
    code = run_from_command_line([*cli_args(config, tmp_path), *extra])
    assert_one_clear_line(code, capsys.readouterr().err, expected)
    assert not list(tmp_path.rglob("*.safetensors"))
