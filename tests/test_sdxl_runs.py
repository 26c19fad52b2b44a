"""SDXL runs: one resumed from a checkpoint ends bitwise equal to one never stopped (its size
conditioning follows the resumed sample stream); the quickstart's analysis callbacks and the
``test`` stage run on it through train.py; the papers' SDXL recipes (CLIF's two stages in
their official setting too) run through it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from baseline_checks import assert_resume_is_exact
from helpers import REPO_ROOT, clif_two_step_options, optimizer_with_lr, tiny_datamodule

from models import LoRA, TextualInversion
from models.base import PersonalizationModule
from train import main

pytestmark = pytest.mark.slow
SDXL = ["--config", "configs/backbones/sdxl.yaml", "--config", "configs/tiny.yaml"]


def newest_last(root: Path) -> Path:
    """The last.ckpt of the newest run under ``root``."""
    return max(root.rglob("last.ckpt"), key=lambda path: path.stat().st_mtime)


@pytest.mark.parametrize("cls", [LoRA, TextualInversion])
def test_an_sdxl_run_resumes_bitwise_equal(cls: type, tmp_path: Path) -> None:
    def build() -> tuple[PersonalizationModule, object]:
        datamodule = tiny_datamodule(repeats=1)
        options = {"train_text_encoder": True} if cls is LoRA else {}
        module = cls(
            pretrained_model_name_or_path="tiny-sdxl", concepts=datamodule.concepts,
            optimizer=optimizer_with_lr(1e-2), **options,
        )  # fmt: skip
        return module, datamodule

    assert_resume_is_exact(build, tmp_path)


def test_the_quickstart_with_its_analysis_callbacks_and_test_on_sdxl(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO_ROOT)
    common = [
        "--config",
        "configs/quickstart.yaml",
        *SDXL,
        "--trainer.default_root_dir",
        str(tmp_path),
    ]
    cli = main(
        ["fit", *common, "--trainer.max_steps", "2", "--trainer.enable_progress_bar", "false"]
    )
    last = newest_last(tmp_path)
    assert cli.model.family.name == "sdxl" and list(tmp_path.rglob("events.out.tfevents*"))
    cli = main(
        [
            "test",
            *common,
            "--ckpt_path",
            str(last),
            "--data.init_args.eval_prompts.max_prompts",
            "1",
        ]
    )
    assert cli.model.family.name == "sdxl"
    assert any(key.startswith("test/clip_t") for key in cli.trainer.callback_metrics)


# Each recipe whose baseline and losses support SDXL, and the losses it trains with.
SDXL_RECIPES = {
    "classdiffusion/custom_diffusion": {"spl"},
    "accord/custom_diffusion": {"dd", "pd"},
    "accord/dreambooth": {"dd"},
    "accord/lora": {"dd"},
    "sude/dreambooth": {"sude"},
}


def two_sdxl_steps(configs: list[str], root: Path) -> Any:
    """``fit`` of the configs (then the SDXL and tiny overlays) for two steps; the CLI."""
    cli = main([
        "fit", *(word for config in configs for word in ("--config", config)), *SDXL,
        "--trainer.default_root_dir", str(root), "--trainer.max_steps", "2",
        "--trainer.enable_progress_bar", "false", "--trainer.callbacks", "[]",
    ])  # fmt: skip
    assert cli.model.family.name == "sdxl" and cli.trainer.global_step == 2
    assert all(torch.isfinite(v) for k, v in cli.trainer.callback_metrics.items() if "loss" in k)
    return cli


@pytest.mark.parametrize("recipe", sorted(SDXL_RECIPES))
def test_the_papers_recipes_run_on_sdxl(
    recipe: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO_ROOT)
    cli = two_sdxl_steps([f"configs/{recipe}.yaml"], tmp_path)
    assert {r.name for r in cli.model.regularizers} == SDXL_RECIPES[recipe]


# ACCORD's Table 2 SDXL rows: overlays of configs/accord/visual_encoder.yaml.
TABLE_2_ROWS = {
    "visual_encoder": set(),
    "visual_encoder_pd": {"pd"},
    "visual_encoder_pd_dd": {"dd", "pd"},
}


@pytest.mark.parametrize("row", sorted(TABLE_2_ROWS))
def test_accords_table_2_sdxl_rows_run_on_the_tiny_overlay(
    row: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO_ROOT)
    configs = ["configs/accord/visual_encoder.yaml", f"configs/accord/sdxl/{row}.yaml"]
    cli = two_sdxl_steps(configs, tmp_path)
    assert type(cli.model).__name__ == "VisualEncoder"
    assert {r.name for r in cli.model.regularizers} == TABLE_2_ROWS[row]


def test_clifs_official_sdxl_setting_runs_both_stages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO_ROOT)
    common = [
        "--config", "configs/clif/sdxl.yaml", "--config", "configs/tiny.yaml",
        "--model.init_args.memory.adam_8bit", "false",  # bitsandbytes is an optional extra
        *clif_two_step_options(tmp_path),
    ]  # fmt: skip
    one = main(["fit", "--config", "configs/clif/stage1_text.yaml", *common,
                "--trainer.default_root_dir", str(tmp_path / "one")])  # fmt: skip
    model = one.model
    assert (model.family.name, model.seed, model.concept_tokens.num_vectors) == ("sdxl", 42, 2)
    assert not model.train_text_encoder and model.memory.gradient_checkpointing
    stage1 = tmp_path / "stage1"
    model.export(stage1)
    two = main(["fit", "--config", "configs/clif/stage2_lora.yaml", *common,
                "--model.init_args.stage1", str(stage1),
                "--data.init_args.augmentation.m_aug", "2",
                "--trainer.default_root_dir", str(tmp_path / "two")])  # fmt: skip
    assert two.model.family.name == "sdxl" and two.trainer.global_step == 2
    for ours, theirs in zip(two.model.encoder_concept_tokens, model.encoder_concept_tokens):
        assert ours.embedding.vectors.shape == theirs.embedding.vectors.shape


def test_the_mlm_recipe_runs_on_sdxl_with_psi_pretrained_on_its_first_encoder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from components.contextualizer.store import default_contextualizer_dir
    from models.pretraining.contextualizer import ContextualizerPretraining

    monkeypatch.chdir(REPO_ROOT)
    torch.manual_seed(0)  # psi exported untrained where MLM looks for tiny-sdxl's by default
    ContextualizerPretraining("tiny-sdxl").export(default_contextualizer_dir("tiny-sdxl"))
    cli = two_sdxl_steps(["configs/diverse_context/textual_inversion.yaml"], tmp_path)
    assert [r.name for r in cli.model.regularizers] == ["mlm"]
    logged = {k: float(v) for k, v in cli.trainer.callback_metrics.items() if "mlm" in k}
    assert logged and all(v > 0 for v in logged.values()), logged


def test_the_xti_recipe_runs_on_sdxl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO_ROOT)
    cli = two_sdxl_steps(["configs/xti.yaml"], tmp_path)
    assert len(cli.model.layer_names) == 4  # tiny-sdxl's spatial transformers
