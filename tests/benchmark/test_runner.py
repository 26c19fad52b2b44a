"""The benchmark runner: 2 synthetic subjects x 2 methods on a local Ray (2 CPUs), a failing
method beside them, resume; seeds as a third axis; the table's mean ± std."""

from __future__ import annotations

import csv
import json
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import REPO_ROOT

from benchmark.pair import Method, Pair, parse_method, results_file, run_folder
from benchmark.ray_pool import PoolSettings
from benchmark.runner import WORKER_LOG, main, run_benchmark
from benchmark.subjects import Subject, parse_subject
from benchmark.table import write_table
from metrics.settings import ALL_METRICS
from preparation.synthetic_concept import draw_synthetic_concept

pytestmark = pytest.mark.slow  # runs training end to end, or a process grid

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


def two_subjects(root: Path) -> list[Subject]:
    return [
        synthetic_subject(root, "robot", "toy", seed=0),
        synthetic_subject(root, "robodog", "dog", seed=7),
    ]


def test_ray_runs_the_grid_reports_a_failed_pair_and_a_second_call_skips_finished_pairs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(REPO_ROOT)
    subjects = two_subjects(tmp_path / "data")
    broken_config = tmp_path / "broken.yaml"
    broken_config.write_text(
        Path("configs/textual_inversion.yaml").read_text()
        + "\nmdoel:\n  init_args: {scale_lr: true}\n"
    )
    # One method that trains and one that fails at its config: two pairs at a time through
    # Ray, the failure reported by name, the table averaged over the subjects that ran.
    methods = [parse_method("cd=configs/custom_diffusion.yaml")]
    broken = parse_method(f"broken={broken_config}")
    output = tmp_path / "bench"
    overlay = [Path("configs/tiny.yaml")]
    pool = PoolSettings(num_cpus=2)  # a local Ray instance with 2 CPUs: two pairs at a time
    handler_before = signal.getsignal(signal.SIGTERM)
    first = run_benchmark([*methods, broken], subjects, output, overlay, QUICK, pool)
    assert len(first["ran"]) == 2 and not first["skipped"]
    assert sorted(p.describe() for p in first["failed"]) == ["broken on robodog", "broken on robot"]
    printed = capsys.readouterr().out
    for subject in subjects:  # each failure named with its exit code and its log
        log = run_folder(output.resolve(), Pair(broken, subject)) / WORKER_LOG
        assert f"FAILED broken on {subject.name}: exit code 1; log: {log}" in printed
        assert "mdoel" in log.read_text()

    per_pair = {
        (m.name, s.name): json.loads(results_file(output, Pair(m, s)).read_text())
        for m in methods
        for s in subjects
    }
    assert per_pair[("cd", "robodog")]["prompts"]["set"] == "dreambench_live"
    with (output / "table.csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert [row["method"] for row in table] == ["cd", "broken"]
    assert list(table[0]) == ["method", *ALL_METRICS, "subjects"]
    assert table[1]["subjects"] == "0/2"
    assert table[0]["subjects"] == "2/2"
    for key in ALL_METRICS:
        values = [per_pair[("cd", s.name)]["metrics"][key] for s in subjects]
        assert float(table[0][key]) == pytest.approx(sum(values) / 2)
    markdown = (output / "table.md").read_text().splitlines()
    assert markdown[0].startswith(
        "| Method | CLIP-T ↑ | CLIP-I ↑ | DINO-I ↑ | BLIP-T ↑ | DINO-FG ↑"
    )
    assert len(markdown) == 2 + 2

    # Ray's SIGTERM handler does not outlive the run (a later SIGTERM means what it did).
    assert signal.getsignal(signal.SIGTERM) is handler_before
    stamps = {p: results_file(output, p).stat().st_mtime_ns for p in first["ran"]}
    second = run_benchmark(methods, subjects, output, overlay, QUICK, pool)
    assert not second["ran"] and len(second["skipped"]) == 2
    assert all(results_file(output, p).stat().st_mtime_ns == t for p, t in stamps.items())


def test_seeds_are_a_third_axis_with_their_own_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO_ROOT)
    subject = two_subjects(tmp_path / "data")[0]
    method = parse_method("configs/textual_inversion.yaml")
    output = tmp_path / "bench"
    overlay = [Path("configs/tiny.yaml")]
    outcome = run_benchmark(
        [method], [subject], output, overlay, QUICK, in_process=True, seeds=[0, 1]
    )
    assert not outcome["failed"] and [p.seed for p in outcome["ran"]] == [0, 1]
    folders = [results_file(output, Pair(method, subject, seed)).parents[1] for seed in (0, 1)]
    assert [f.name for f in folders] == ["seed-0", "seed-1"]
    configs = sorted(output.rglob("config.yaml"))
    assert [yaml.safe_load(c.read_text())["seed_everything"] for c in configs] == [0, 1]
    with (output / "table.csv").open() as handle:
        (row,) = list(csv.DictReader(handle))
    assert row["subjects"] == "2/2" and row["seeds"] == "2"
    values = [
        json.loads(results_file(output, Pair(method, subject, seed)).read_text())["metrics"]
        for seed in (0, 1)
    ]
    for key in ALL_METRICS:
        pair = np.array([v[key] for v in values], dtype=float)
        assert float(row[key]) == pytest.approx(pair.mean())
        assert float(row[f"{key}_std"]) == pytest.approx(pair.std(ddof=1))


def test_the_table_over_seeds_is_the_mean_and_std_of_each_seeds_subject_mean(
    tmp_path: Path,
) -> None:
    # Written results of 2 methods x 3 subjects x 3 seeds, one pair missing; the table must
    # equal the computation here: per seed the mean over subjects, then mean and std (n-1).
    rng = np.random.default_rng(0)
    methods = [Method("a", Path("a.yaml")), Method("b", Path("b.yaml"))]
    subjects = [Subject(name, tmp_path, "dog") for name in ("s1", "s2", "s3")]
    seeds = [0, 1, 2]
    values: dict[tuple[str, str, int], float] = {}
    for method in methods:
        for subject in subjects:
            for seed in seeds:
                if (method.name, subject.name, seed) == ("b", "s2", 1):
                    continue  # not finished
                value = float(rng.uniform(0.2, 0.9))
                values[(method.name, subject.name, seed)] = value
                path = results_file(tmp_path / "out", Pair(method, subject, seed))
                path.parent.mkdir(parents=True)
                path.write_text(json.dumps({"metrics": {"clip_t": value}}))
    write_table(tmp_path / "out", methods, subjects, seeds)
    with (tmp_path / "out" / "table.csv").open() as handle:
        rows = {row["method"]: row for row in csv.DictReader(handle)}
    for method in ("a", "b"):
        per_seed = [
            np.mean([v for (m, _, s), v in values.items() if m == method and s == seed])
            for seed in seeds
        ]
        assert float(rows[method]["clip_t"]) == pytest.approx(np.mean(per_seed))
        assert float(rows[method]["clip_t_std"]) == pytest.approx(np.std(per_seed, ddof=1))
    assert rows["a"]["subjects"] == "9/9" and rows["b"]["subjects"] == "8/9"
    markdown = (tmp_path / "out" / "table.md").read_text()
    assert f"{float(rows['a']['clip_t']):.3f} ± {float(rows['a']['clip_t_std']):.3f}" in markdown


def test_without_ray_the_runner_says_how_to_get_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now fails
    subject = Subject("s", tmp_path, "dog")
    method = Method("ti", REPO_ROOT / "configs" / "textual_inversion.yaml")
    with pytest.raises(ImportError, match=r"pip install -e '\.\[benchmark\]'.*--in-process"):
        run_benchmark([method], [subject], tmp_path / "out")


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
