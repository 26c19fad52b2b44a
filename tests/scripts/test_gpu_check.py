"""scripts/gpu_check.py's dry run: every stage of the GPU check, on the CPU with the tiny
models, so the script cannot rot while no GPU is lent; and the wheel script names only pinned
packages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "scripts"))
from gpu_check import SD_CASES  # noqa: E402  (a script, not a package)

pytestmark = pytest.mark.slow


def test_the_dry_run_writes_every_stages_figures(tmp_path: Path, tiny_cache: Path) -> None:
    out = tmp_path / "out"
    env = dict(os.environ, HF_HUB_OFFLINE="1", PERSONALIZE_CACHE=str(tiny_cache))
    done = subprocess.run(
        [sys.executable, "scripts/gpu_check.py", "--dry-run", "--out", str(out)],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    stages = report["stages"]
    assert list(stages) == ["build", "recipe", "evaluation", "memory_sd", "memory_sdxl"]
    assert all(stage["status"] == "ok" for stage in stages.values()), stages
    (recipe,) = stages["recipe"]["rows"]
    assert recipe["s_per_step"] > 0 and recipe["minutes_for_500_steps"] > 0
    (evaluation,) = stages["evaluation"]["rows"]
    assert 0 < evaluation["generation_share"] < 1
    memory = stages["memory_sd"]["rows"] + stages["memory_sdxl"]["rows"]
    # each case once, the switch sets alternating (the GPU run takes both for every case)
    assert len(memory) == 6 + 4 and all("error" not in row for row in memory), memory
    assert {row["case"] for row in stages["memory_sd"]["rows"]} == set(SD_CASES)
    assert {row["switches"] for row in memory} == {"plain", report["scale"]["low_memory"]}
    assert all(row["peak_mb"] > 0 and row["step_s"] > 0 for row in memory)
    table = (out / "gpu_check.md").read_text()
    assert "## memory_sdxl (ok" in table and "| tiny-sdxl | 32 | lora |" in table


def test_the_wheels_are_the_pinned_versions() -> None:
    script = (REPO_ROOT / "scripts" / "gpu_wheels.sh").read_text()
    packages = script.split("PACKAGES=(", 1)[1].split(")", 1)[0].split()
    pins = (REPO_ROOT / "requirements" / "constraints.txt").read_text().lower()
    assert packages and all(f"\n{name.lower()}==" in f"\n{pins}" for name in packages)
    assert ".whl/" in (REPO_ROOT / ".gitignore").read_text().splitlines()
