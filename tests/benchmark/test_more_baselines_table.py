"""The benchmark runner trains and scores ClassDiffusion's (NeTI, SVDiff, ProSpect) and CLIF's
(Mix-of-Show's ED-LoRA) other baselines through their shipped configs: one row each."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from helpers import REPO_ROOT
from test_runner import QUICK, synthetic_subject

from benchmark.pair import parse_method
from benchmark.runner import run_benchmark

pytestmark = pytest.mark.slow

CONFIGS = [
    "configs/classdiffusion/neti.yaml",
    "configs/classdiffusion/svdiff.yaml",
    "configs/classdiffusion/prospect.yaml",
    "configs/clif/mix_of_show.yaml",
]


def test_the_runner_scores_each_new_baseline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO_ROOT)
    subject = synthetic_subject(tmp_path / "data", "robot", "toy", seed=0)
    methods = [parse_method(config) for config in CONFIGS]
    overlay = [Path("configs/tiny.yaml")]
    # SVDiff's recipe generates 200 class images; the overlay's class-image settings cut that.
    quick = [*QUICK, f"data.init_args.class_images.folder={tmp_path / 'class_images'}"]
    outcome = run_benchmark(methods, [subject], tmp_path / "bench", overlay, quick, in_process=True)
    assert not outcome["failed"], outcome["failed"]
    with (tmp_path / "bench" / "table.csv").open() as handle:
        rows = {row["method"]: row for row in csv.DictReader(handle)}
    assert set(rows) == {"neti", "svdiff", "prospect", "mix_of_show"}
    for row in rows.values():
        assert row["subjects"] == "1/1"
        assert float(row["clip_t"]) == float(row["clip_t"])  # a number, not NaN
