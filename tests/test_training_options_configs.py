"""The training options (EMA, Min-SNR, the subject-masked loss, buckets) together on every
baseline's recipe through train.py with the tiny overlay: the run trains, logs, and exports
the average; each LoRA kind runs and exports; an adapter kind on another baseline is one line;
buckets run on SD and FLUX, and a batch no bucket can fill is one line."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from helpers import REPO_ROOT, write_photos, write_photos_and_masks
from test_cli import cli_args, run_folder
from test_user_errors import assert_one_clear_line

from callbacks.sample_images import SampleImages
from train import main, run_from_command_line

pytestmark = pytest.mark.slow

RECIPES = ["lora", "textual_inversion", "dreambooth", "custom_diffusion", "xti", "visual_encoder"]


def more_subjects(recipe: str, photos: Path, masks: Path) -> list[str]:
    """VisualEncoder's recipe trains on several subjects: each needs its masks too."""
    if recipe != "visual_encoder":
        return []
    second = f"{{token: <v1>, class_word: robot, instance_data_dir: {photos}, mask_dir: {masks}}}"
    return ["--data.init_args.additional_concepts", f"[{second}]"]


@pytest.mark.parametrize("recipe", RECIPES)
def test_the_options_run_on_each_baseline(
    recipe: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO_ROOT)
    monkeypatch.setattr(SampleImages, "_log_samples", lambda self, *args: None)
    photos, masks = write_photos_and_masks(tmp_path / "data")
    cli = main([
        *cli_args(recipe, tmp_path / "runs", steps=2),
        "--data.init_args.instance_data_dir", str(photos), "--data.init_args.class_word", "robot",
        "--data.init_args.mask_dir", str(masks),
        "--model.init_args.background_loss_weight", "0.1",
        "--model.init_args.min_snr_gamma", "5.0",
        "--model.init_args.ema", "{decay: 0.9}",
        # buckets (Custom Diffusion's square rescale augmentation does not go with them)
        "--data.init_args.buckets", "{step: 8}", "--data.init_args.rescale_augmentation", "false",
        *more_subjects(recipe, photos, masks),
    ])  # fmt: skip
    assert cli.trainer.global_step == 2
    average = cli.model.weights_average()
    assert average is not None and average.average.optimization_step == 2
    assert (run_folder(tmp_path / "runs") / "export" / "export.json").is_file()


@pytest.mark.parametrize("kind", ["dora", "loha", "lokr"])
def test_each_lora_kind_runs_and_exports_through_train_py(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO_ROOT)
    monkeypatch.setattr(SampleImages, "_log_samples", lambda self, *args: None)
    cli = main([*cli_args("lora", tmp_path, steps=2), "--model.init_args.adapter", kind])
    assert cli.model.adapter == kind and cli.trainer.global_step == 2
    written = {p.name for p in (run_folder(tmp_path) / "export").iterdir()}
    lycoris = kind in ("loha", "lokr")
    assert ("lycoris.safetensors" if lycoris else "pytorch_lora_weights.safetensors") in written


def test_an_adapter_kind_on_a_baseline_without_lora_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(REPO_ROOT)
    monkeypatch.setattr(sys, "argv", sys.argv[:1])
    code = run_from_command_line(
        [*cli_args("textual_inversion", tmp_path), "--model.init_args.adapter", "dora"]
    )
    assert_one_clear_line(code, capsys.readouterr().err, "train with configs/lora.yaml")


@pytest.mark.parametrize("backbone", [[], ["--config", "configs/backbones/flux.yaml"]])
def test_buckets_run_through_train_py_and_an_unfillable_batch_is_one_line(
    backbone: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    monkeypatch.chdir(REPO_ROOT)
    monkeypatch.setattr(sys, "argv", sys.argv[:1])
    monkeypatch.setattr(SampleImages, "_log_samples", lambda self, *args: None)
    photos = write_photos(tmp_path / "photos")
    common = cli_args("lora", tmp_path / "runs", steps=2)
    args = [
        *common[:3], *backbone, *common[3:],  # the backbone before the tiny overlay
        "--data.init_args.instance_data_dir", str(photos), "--data.init_args.class_word", "robot",
        "--data.init_args.buckets", "{step: 8}", "--data.init_args.batch_size", "2",
    ]  # fmt: skip
    cli = main(args)
    assert cli.trainer.global_step == 2
    unfillable = ["--data.init_args.repeats", "1", "--data.init_args.batch_size", "4"]
    code = run_from_command_line([*args, *unfillable])
    assert_one_clear_line(code, capsys.readouterr().err, "fewer than the global batch of 4")
