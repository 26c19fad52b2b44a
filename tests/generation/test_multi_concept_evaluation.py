"""`train.py test` of two concepts on a multi-concept prompt set, on the tiny pipeline."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
from helpers import REPO_ROOT
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from metrics.settings import ALL_METRICS
from train import main

PER_CONCEPT = ("clip_i", "dino_i", "dino_fg", "gram_d")


def test_two_concepts_are_each_scored_against_their_own_photos(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO_ROOT)
    cli = main([
        "test",
        "--config", "configs/custom_diffusion.yaml",
        "--config", "configs/tiny.yaml",
        "--trainer.default_root_dir", str(tmp_path),
        # A second synthetic toy: drawn from another seed, so its photos differ from the first.
        "--data.init_args.additional_concepts", "[{token: '<v2>'}]",
        "--data.init_args.eval_prompts.source", "multi",
        "--data.init_args.eval_prompts.max_prompts", "2",
        "--data.init_args.eval_prompts.images_per_prompt", "1",
    ])  # fmt: skip
    (folder,) = Path(cli.trainer.log_dir).glob("eval/test-*")
    with (folder / "manifest.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["prompt"] for r in rows] == [
        "a <v1> toy and a <v2> toy in the jungle",
        "a <v1> toy and a <v2> toy in the snow",
    ]
    assert rows[0]["score_prompt"] == "a toy and a toy in the jungle"
    assert [r["concepts"] for r in rows] == ["0 1", "0 1"]

    results = json.loads((folder / "results.json").read_text())
    values = results["metrics"]
    per_concept = [f"{k}_c{i}" for k in PER_CONCEPT for i in (0, 1)]
    assert set(values) == set(ALL_METRICS) | set(per_concept)
    assert all(math.isfinite(v) for v in values.values())
    for key in PER_CONCEPT:
        assert values[key] == pytest.approx((values[f"{key}_c0"] + values[f"{key}_c1"]) / 2)
    # Same images, different references: the two concepts' scores differ.
    assert values["dino_i_c0"] != values["dino_i_c1"]
    assert values["clip_i_c0"] != values["clip_i_c1"]
    assert [c["token"] for c in results["concepts"]] == ["<v1>", "<v2>"]
    assert "per_concept" in results["definitions"]["clip_i"]
    with (folder / "results.csv").open() as handle:
        (row,) = list(csv.DictReader(handle))
    assert float(row["clip_i_c1"]) == pytest.approx(values["clip_i_c1"])
    events = EventAccumulator(str(cli.trainer.log_dir))
    events.Reload()
    assert {"test/clip_i_c0", "test/clip_i_c1", "test/clip_i"} <= set(events.Tags()["scalars"])
