"""`train.py test` / `predict` on the tiny pipeline: images, manifest, results, checkpoints."""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

import pytest
import torch
from helpers import REPO_ROOT
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from metrics.settings import ALL_METRICS
from pretrained.eval_models import EvalModelNotFoundError
from train import main, run_from_command_line

CONFIG = "custom_diffusion"
CHECKPOINT_ONLY = (
    '[{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", '
    '"init_args": {"save_last": true}}]'
)


def args(subcommand: str, root: Path, *extra: str) -> list[str]:
    return [
        subcommand,
        "--config", f"configs/{CONFIG}.yaml",
        "--config", "configs/tiny.yaml",
        "--trainer.default_root_dir", str(root),
        *extra,
    ]  # fmt: skip


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(root, last.ckpt) of a 2-step Custom Diffusion run on the synthetic toy."""
    root = tmp_path_factory.mktemp("evaluation-stage")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(REPO_ROOT)
        # Only the checkpoint callback: the sample grids are not what this file tests.
        main(args("fit", root, "--trainer.max_steps", "2", "--trainer.callbacks", CHECKPOINT_ONLY))
    (checkpoint,) = root.rglob("last.ckpt")
    return root, checkpoint


def test_test_with_ckpt_path_scores_the_trained_weights(
    trained: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, checkpoint = trained
    monkeypatch.chdir(REPO_ROOT)
    cli = main(args("test", root, "--ckpt_path", str(checkpoint)))
    # The model was built fresh from the config; the checkpoint's trained weights replaced it.
    saved = torch.load(checkpoint, weights_only=True, map_location="cpu")["state_dict"]
    state = cli.model.state_dict()
    assert saved and all(torch.equal(state[k], v) for k, v in saved.items())
    run = checkpoint.parent.parent  # the run's own folder, not a new version
    assert Path(cli.trainer.log_dir) == run
    folder = run / "eval" / "test-1"
    rows = read_csv(folder / "manifest.csv")
    assert len(rows) == 4 * 2  # tiny.yaml: 4 DreamBench prompts x 2 images
    assert rows[3] == {
        "file": "images/p001_i01.png",
        "prompt": "a <v1> toy in the snow",
        "score_prompt": "a toy in the snow",
        "prompt_index": "1",
        "image_index": "1",
        "seed": "3",
    }
    assert sorted(p.name for p in (folder / "images").iterdir()) == sorted(
        Path(r["file"]).name for r in rows
    )
    results = json.loads((folder / "results.json").read_text())
    assert list(results["metrics"]) == list(ALL_METRICS)
    assert all(math.isfinite(v) for v in results["metrics"].values())
    assert set(results["definitions"]) == set(ALL_METRICS)
    assert results["definitions"]["dino_i"]["preprocessing"]["center_crop"] == 224
    assert results["generation"]["checkpoint"] == str(checkpoint)
    assert (
        results["prompts"]["set"] == "dreambench_object" and results["prompts"]["num_images"] == 8
    )
    (row,) = read_csv(folder / "results.csv")
    assert row["method"] == "CustomDiffusion"
    assert float(row["dino_i"]) == pytest.approx(results["metrics"]["dino_i"])
    events = EventAccumulator(str(run))
    events.Reload()
    assert {f"test/{k}" for k in ALL_METRICS} <= set(events.Tags()["scalars"])
    assert "test/samples" in events.Tags()["images"]


def test_test_from_the_command_line_ends_with_its_results_and_scores(
    trained: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    root, checkpoint = trained
    monkeypatch.chdir(REPO_ROOT)
    monkeypatch.setattr(sys, "argv", sys.argv[:1])  # the command line sets it: put it back
    argv = args("test", root, "--ckpt_path", str(checkpoint),
                "--data.init_args.eval_prompts.max_prompts", "1")  # fmt: skip
    assert run_from_command_line(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    (results,) = [line.removeprefix("done: results ") for line in lines if "done: results" in line]
    metrics = json.loads(Path(results).read_text())["metrics"]
    (scores,) = [line.removeprefix("scores: ") for line in lines if line.startswith("scores: ")]
    shown = dict(zip(scores.split()[::2], map(float, scores.split()[1::2])))
    assert shown.keys() == metrics.keys() and shown
    assert all(math.isclose(shown[k], metrics[k], abs_tol=5e-5) for k in shown)


def test_predict_generates_without_scoring(
    trained: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, checkpoint = trained
    monkeypatch.chdir(REPO_ROOT)
    out = root / "predictions"
    main(args("predict", root, "--ckpt_path", str(checkpoint),
              "--model.init_args.evaluation.output_dir", str(out)))  # fmt: skip
    assert len(read_csv(out / "manifest.csv")) == 8
    assert len(list((out / "images").glob("*.png"))) == 8
    assert not (out / "results.json").exists()


def test_bad_prompt_file_fails_before_any_model_is_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO_ROOT)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a photo of a dog on the beach\n")
    with pytest.raises(ValueError, match="no concept placeholder"):
        main(args("test", tmp_path, "--data.init_args.eval_prompts.source", str(prompts)))
    assert not list(tmp_path.rglob("events.out.tfevents*"))


def test_reference_folder_without_images_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO_ROOT)
    empty = tmp_path / "photos"
    empty.mkdir()
    (empty / "notes.txt").write_text("no photos here")
    with pytest.raises(ValueError, match="holds no images"):
        photos = ["--data.init_args.instance_data_dir", str(empty)]
        main(args("test", tmp_path, *photos, "--data.init_args.class_word", "dog"))


def test_missing_metric_model_fails_before_generating(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO_ROOT)
    missing = tmp_path / "dino-vits16"
    extra = ["--model.init_args.evaluation.metrics.dino_model", str(missing)]
    with pytest.raises(EvalModelNotFoundError, match="huggingface-cli download"):
        main(args("test", tmp_path, *extra))
    assert not list(tmp_path.rglob("*.png"))
