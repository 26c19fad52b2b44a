"""Every shipped config parses (alone and under the tiny overlay), and the parsed options hold
what the file says: an option the DataModule or a module no longer takes, or one the parser
silently drops, fails here before a user meets it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import REPO_ROOT, is_overlay

from datamodules.moved_options import MOVED_OPTIONS, moved_option_hint
from train import main

CONFIGS = sorted((REPO_ROOT / "configs").rglob("*.yaml"))
EXPERIMENTS = [str(p.relative_to(REPO_ROOT)) for p in CONFIGS if not is_overlay(p)]
OVERLAYS = [str(p.relative_to(REPO_ROOT)) for p in CONFIGS if is_overlay(p)]


def parsed(capsys: pytest.CaptureFixture[str], *configs: str) -> dict[str, Any]:
    args = [
        "fit",
        *(word for c in configs for word in ("--config", c)),
        "--print_config",
    ]
    with pytest.raises(SystemExit) as stop:
        main(args)
    assert stop.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


def assert_holds(expected: Any, actual: Any, where: str) -> None:
    """Each value the file sets is in the parsed config (dicts compared key by key)."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        for key, value in expected.items():
            assert key in actual, f"{where}.{key} was dropped by the parser"
            assert_holds(value, actual[key], f"{where}.{key}")
    elif isinstance(expected, list) and isinstance(actual, list):
        assert len(actual) == len(expected), where
        for index, (want, got) in enumerate(zip(expected, actual)):
            assert_holds(want, got, f"{where}[{index}]")
    elif isinstance(expected, float) or isinstance(actual, float):
        assert float(actual) == pytest.approx(float(expected)), where
    else:
        assert actual == expected, where


def test_every_config_is_listed() -> None:
    assert len(EXPERIMENTS) >= 18 and "configs/quickstart.yaml" in EXPERIMENTS


@pytest.mark.parametrize("config", EXPERIMENTS)
def test_shipped_config_parses_and_keeps_its_options(
    config: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(REPO_ROOT)
    written = yaml.safe_load(Path(config).read_text())
    alone = parsed(capsys, config)
    for group in ("data", "model"):
        if group in written:
            assert alone[group]["class_path"].endswith(written[group]["class_path"].split(".")[-1])
            assert_holds(written[group].get("init_args", {}), alone[group]["init_args"], group)
    under_tiny = parsed(capsys, config, "configs/tiny.yaml")
    assert under_tiny["model"]["init_args"]["pretrained_model_name_or_path"] == "tiny"


def test_the_overlays_are_the_known_ones() -> None:
    assert OVERLAYS == [
        "configs/accord/flux/lora.yaml",
        "configs/accord/ip_adapter_dd_pd.yaml",
        "configs/accord/sdxl/visual_encoder.yaml",
        "configs/accord/sdxl/visual_encoder_pd.yaml",
        "configs/accord/sdxl/visual_encoder_pd_dd.yaml",
        "configs/accord/style.yaml",
        "configs/backbones/flux.yaml",
        "configs/backbones/sdxl.yaml",
        "configs/classdiffusion/flux_lora.yaml",
        "configs/clif/sdxl.yaml",
        "configs/flux/fsdp.yaml",
        "configs/flux/low_memory.yaml",
        "configs/low_memory.yaml",
        "configs/tiny.yaml",
        "configs/validation.yaml",
    ]


def test_the_sdxl_overlay_then_tiny_selects_tiny_sdxl(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(REPO_ROOT)
    config = parsed(capsys, "configs/lora.yaml", "configs/backbones/sdxl.yaml")
    assert config["model"]["init_args"]["backbone"] == "sdxl"
    assert config["data"]["init_args"]["resolution"] == 1024
    config = parsed(capsys, "configs/lora.yaml", "configs/backbones/sdxl.yaml", "configs/tiny.yaml")
    model = config["model"]["init_args"]
    assert (model["backbone"], model["pretrained_model_name_or_path"]) == ("sdxl", "tiny")


def test_the_flux_overlay_then_tiny_selects_tiny_flux_with_its_guidance(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(REPO_ROOT)
    config = parsed(capsys, "configs/lora.yaml", "configs/backbones/flux.yaml", "configs/tiny.yaml")
    model = config["model"]["init_args"]
    assert (model["backbone"], model["pretrained_model_name_or_path"]) == ("flux", "tiny")
    assert model["flow_matching"]["guidance_scale"] == 3.5


def test_the_low_memory_overlay_applies(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(REPO_ROOT)
    config = parsed(capsys, "configs/dreambooth.yaml", "configs/low_memory.yaml")
    assert config["trainer"]["precision"] == "bf16-mixed"
    assert config["model"]["init_args"]["memory"]["frozen_dtype"] == "bf16"


@pytest.mark.parametrize("old", sorted(MOVED_OPTIONS))
def test_an_option_that_moved_is_named_with_its_new_place(old: str) -> None:
    message = f"Problem with given class_path 'x': Option '{old}' is not accepted"
    hint = moved_option_hint(message)
    assert f"data.init_args.{MOVED_OPTIONS[old]}" in hint and hint.startswith(message)
    assert moved_option_hint("Option 'lr' is not accepted").endswith("accepted")
