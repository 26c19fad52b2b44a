"""The benchmark runner: 2 synthetic subjects x 2 methods on the tiny pipeline, then resume."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from helpers import REPO_ROOT

from benchmark.pair import parse_method, results_file
from benchmark.runner import main, run_benchmark
from benchmark.subjects import Subject, parse_subject
from datamodules.synthetic_concept import draw_synthetic_concept
from metrics.settings import ALL_METRICS

QUICK = [
    "trainer.max_steps=1",
    "trainer.callbacks=[]",  # no sample grids: this test is about the runner
    "data.init_args.eval_prompts.max_prompts=1",
    "data.init_args.eval_prompts.images_per_prompt=2",
]


def synthetic_subject(root: Path, name: str, class_word: str, seed: int) -> Subject:
    folder = root / name
    folder.mkdir(parents=True)
    for index, image in enumerate(draw_synthetic_concept(3, 64, seed)):
        image.save(folder / f"{index:02d}.png")
    return parse_subject(f"{folder}:{class_word}")


def test_runner_makes_the_table_and_a_second_call_skips_finished_pairs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO_ROOT)
    subjects = [
        synthetic_subject(tmp_path / "data", "robot", "toy", seed=0),
        synthetic_subject(tmp_path / "data", "robodog", "dog", seed=7),
    ]
    methods = [
        parse_method("configs/textual_inversion.yaml"),
        parse_method("cd=configs/custom_diffusion.yaml"),
    ]
    output = tmp_path / "bench"
    overlay = [Path("configs/tiny.yaml")]
    first = run_benchmark(methods, subjects, output, overlay, QUICK, in_process=True)
    assert not first["failed"] and len(first["ran"]) == 4 and not first["skipped"]

    per_pair = {
        (m.name, s.name): json.loads(results_file(output, m, s).read_text())
        for m in methods
        for s in subjects
    }
    assert per_pair[("cd", "robodog")]["prompts"]["set"] == "dreambench_live"
    with (output / "table.csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert [row["method"] for row in table] == ["textual_inversion", "cd"]
    assert list(table[0]) == ["method", *ALL_METRICS, "subjects"]
    for row in table:
        assert row["subjects"] == "2/2"
        for key in ALL_METRICS:
            values = [per_pair[(row["method"], s.name)]["metrics"][key] for s in subjects]
            assert float(row[key]) == pytest.approx(sum(values) / 2)
    markdown = (output / "table.md").read_text().splitlines()
    assert markdown[0].startswith(
        "| Method | CLIP-T ↑ | CLIP-I ↑ | DINO-I ↑ | BLIP-T ↑ | DINO-FG ↑"
    )
    assert len(markdown) == 2 + len(methods)

    stamps = {p: results_file(output, *p).stat().st_mtime_ns for p in first["ran"]}
    second = run_benchmark(methods, subjects, output, overlay, QUICK, in_process=True)
    assert not second["ran"] and len(second["skipped"]) == 4
    assert all(results_file(output, *p).stat().st_mtime_ns == t for p, t in stamps.items())


def test_a_subject_folder_without_images_stops_the_runner_before_training(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        main(["--methods", "configs/textual_inversion.yaml", "--subjects", f"{empty}:dog",
              "--output", str(tmp_path / "bench")])  # fmt: skip
    assert not (tmp_path / "bench").exists()


def test_subject_and_method_specs_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="FOLDER:CLASS_WORD"):
        parse_subject("just-a-folder")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        parse_method(f"x={tmp_path / 'missing.yaml'}")
