"""Zero-shot faces (ACCORD's Table 4): IP-Adapter with and without DDLoss + PDLoss, trained on a
folder of single-face images and tested on held-out faces, through the benchmark runner."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from helpers import REPO_ROOT
from PIL import Image
from skimage import data as skimage_data

from benchmark.pair import Pair, parse_method, results_file
from benchmark.runner import run_benchmark
from benchmark.subjects import parse_subject

QUICK = [
    "trainer.max_steps=1",
    "trainer.callbacks=[]",
    "data.init_args.eval_prompts.max_prompts=1",
    "data.init_args.eval_prompts.images_per_prompt=2",
    "data.init_args.validation_split=1",  # the last face is the held-out test reference
]


def face_folder(root: Path) -> Path:
    """Real faces: crops of scikit-image's astronaut and two upscaled LFW faces."""
    folder = root / "faces"
    folder.mkdir(parents=True)
    astronaut = Image.fromarray(skimage_data.astronaut())
    lfw = skimage_data.lfw_subset()
    for index in range(2):
        face = Image.fromarray((lfw[index] * 255).astype(np.uint8)).convert("RGB")
        face.resize((128, 128), Image.Resampling.BICUBIC).save(folder / f"{index:02d}.png")
    for index, (x, y) in enumerate([(100, 0), (140, 20)], start=2):
        astronaut.crop((x, y, x + 300, y + 300)).save(folder / f"{index:02d}.png")
    return folder


@pytest.mark.slow
def test_table_4_rows_train_and_score_held_out_faces(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO_ROOT)
    subject = parse_subject(f"{face_folder(tmp_path)}:person:faces")
    methods = [
        parse_method("ip_adapter=configs/accord/ip_adapter.yaml"),
        parse_method(
            "ip_adapter_ours=configs/accord/ip_adapter.yaml+configs/accord/ip_adapter_dd_pd.yaml"
        ),
    ]
    output = tmp_path / "bench"
    outcome = run_benchmark(
        methods, [subject], output, [Path("configs/tiny.yaml")], QUICK, in_process=True
    )
    assert not outcome["failed"], outcome["failed"]
    for method in methods:
        results = json.loads(results_file(output, Pair(method, subject)).read_text())
        metrics = results["metrics"]
        assert {"clip_t", "blip_t", "face_sim", "face_sim_missing"} <= set(metrics)
        # One held-out face x 1 prompt x 2 images; the tiny model draws no faces, which
        # Face-Sim reports as missing rather than dropping.
        assert metrics["face_sim_missing"] == 2
    with (output / "table.csv").open() as handle:
        rows = {row["method"]: row for row in csv.DictReader(handle)}
    assert set(rows) == {"ip_adapter", "ip_adapter_ours"}
    assert all(row["clip_t"] and row["blip_t"] for row in rows.values())


def test_a_method_of_a_config_and_an_overlay_round_trips() -> None:
    configs = ["configs/accord/ip_adapter.yaml", "configs/accord/ip_adapter_dd_pd.yaml"]
    method = parse_method("ours=" + "+".join(str(REPO_ROOT / c) for c in configs))
    assert method.name == "ours"
    assert [c.name for c in method.configs] == ["ip_adapter.yaml", "ip_adapter_dd_pd.yaml"]
    assert parse_method(method.spec) == method
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        parse_method(f"x={REPO_ROOT / configs[0]}+nope.yaml")
