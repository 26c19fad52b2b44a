"""configs/dreambooth.yaml and configs/lora.yaml run 3 steps in-process with the tiny overlay."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from helpers import REPO_ROOT
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_cli import assert_complete_run, cli_args, run_folder

from train import main

pytestmark = [pytest.mark.smoke, pytest.mark.slow]  # every baseline, loss and export once

# The configs' own callbacks, with sampling cut to one image in 2 steps (the samples callback
# is tested elsewhere; here it must only run).
CHEAP_CALLBACKS = json.dumps([
    {"class_path": "callbacks.SampleImages",
     "init_args": {"every_n_steps": 100, "prompts": ["a photo of a {}"], "images_per_prompt": 1,
                   "num_inference_steps": 2}},
    {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
     "init_args": {"every_n_train_steps": 100, "save_last": True}},
])  # fmt: skip
DREAMBOOTH_EXPORT = {"model_index.json"}
LORA_EXPORT = {"pytorch_lora_weights.safetensors", "kohya_lora.safetensors", "<v1>.safetensors"}


@pytest.mark.parametrize(
    ("config", "exports"), [("dreambooth", DREAMBOOTH_EXPORT), ("lora", LORA_EXPORT)]
)
def test_config_runs_three_steps_with_the_tiny_overlay(
    config: str, exports: set[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO_ROOT)
    class_dir = tmp_path / "class_images"
    args = cli_args(config, tmp_path) + [
        "--trainer.callbacks", CHEAP_CALLBACKS,
        "--data.init_args.class_images.folder", str(class_dir),
    ]  # fmt: skip
    cli = main(args)
    assert cli.trainer.global_step == 3
    folder = run_folder(tmp_path)
    assert_complete_run(folder, exports)
    scalars = EventAccumulator(str(folder))
    scalars.Reload()
    if config == "dreambooth":  # prior preservation on: tiny's 4 class images were generated
        assert len(list(class_dir.glob("class-*.png"))) == 4
        assert "train/loss/prior" in scalars.Tags()["scalars"]
        assert (folder / "export" / "unet" / "diffusion_pytorch_model.safetensors").exists()
    else:
        assert not class_dir.exists()
        assert "train/loss/prior" not in scalars.Tags()["scalars"]


@pytest.mark.parametrize("config", ["dreambooth", "lora"])
def test_configs_hold_the_sd15_recipes(
    config: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(REPO_ROOT)
    with pytest.raises(SystemExit):
        main(["fit", "--config", f"configs/{config}.yaml", "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    model, data = printed["model"]["init_args"], printed["data"]["init_args"]
    assert model["pretrained_model_name_or_path"] == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert data["resolution"] == 512 and data["batch_size"] == 1
    assert data["initializer_word"] == "sks" and model["train_tokens"] is False
    if config == "dreambooth":
        assert printed["model"]["class_path"] == "models.DreamBooth"
        assert model["optimizer"]["init_args"]["lr"] == 5e-6
        assert model["prior_loss_weight"] == 1.0 and data["class_images"]["count"] == 200
        assert 400 <= printed["trainer"]["max_steps"] <= 1000
    else:
        assert printed["model"]["class_path"] == "models.LoRA"
        assert model["optimizer"]["init_args"]["lr"] == 1e-4
        assert model["rank"] == 4 and model["alpha"] is None
