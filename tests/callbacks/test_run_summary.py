"""The closing lines' pieces: which scores are the main ones, which files an export lists."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from callbacks.export import ExportWeights
from callbacks.run_summary import _exported_files, evaluation_summary, main_scores


def test_main_scores_leave_out_each_concepts_own() -> None:
    metrics = {"clip_t": 0.25, "clip_i": 0.5, "clip_i_c0": 0.4, "clip_i_c1": 0.6, "dino_c": 0.1}
    # dino_c is not a per-concept key (no index): kept.
    assert main_scores(metrics) == "clip_t 0.2500  clip_i 0.5000  dino_c 0.1000"


def test_an_export_lists_its_files_not_the_hidden_or_step_folders(tmp_path: Path) -> None:
    export = tmp_path / "export"
    (export / "a1111").mkdir(parents=True)
    (export / "step-2").mkdir()
    (export / ".step-4.pending").mkdir()
    (export / "learned_embeds.safetensors").write_bytes(b"x")
    trainer = SimpleNamespace(
        callbacks=[ExportWeights()], loggers=[], default_root_dir=str(tmp_path)
    )
    folder, files = _exported_files(trainer)  # type: ignore[arg-type]
    assert folder == export
    assert files == ["a1111/", "learned_embeds.safetensors"]


def test_a_test_without_results_says_nothing_and_predict_names_its_images(tmp_path: Path) -> None:
    module = SimpleNamespace(eval_results_file=None, eval_output_folder=None)
    assert evaluation_summary(module, "test") == []
    module = SimpleNamespace(eval_results_file=None, eval_output_folder=tmp_path)
    (line,) = evaluation_summary(module, "predict")
    assert str(tmp_path / "images") in line
