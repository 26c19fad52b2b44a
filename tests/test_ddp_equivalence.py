"""Two gloo processes at local batch 1 train exactly what one process at batch 2 trains.

Each sample's noise, timestep and latent sample are keyed by the sample (step/
draws.py), the ranks take interleaved shares of the same epoch order, and DDP averages the
gradients: what may differ is float reduction order (a batch-2 forward and backward against
two batch-1 ones plus an all-reduce): about 1e-6 of a step's gradient
(tests/step/test_draws.py), which 7 AdamW steps grow to at most 5e-5 of
the weights' change here. Before the draws were keyed by sample, the runs differed by about as
much as training moved them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ddp_equivalence import METHOD_CONFIGS
from safetensors.torch import load_file

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "tests" / "ddp_equivalence.py"
# |w_1 - w_2| / |w_1 - w_start| (Frobenius norms over all trained tensors); measured <= 5e-5.
TOLERANCE = 1e-3


def run(command: list[str], out: Path) -> None:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    result = subprocess.run(
        command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]


def norm(tensors: dict[str, torch.Tensor]) -> float:
    return float(sum((t.double() ** 2).sum() for t in tensors.values()) ** 0.5)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    run([sys.executable, str(SCRIPT), str(out), "2"], out)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    run([*torchrun, "--nproc_per_node", "2", str(SCRIPT), str(out), "2"], out)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("method", list(METHOD_CONFIGS))
def test_two_processes_train_what_one_process_trains(trained: Path, method: str) -> None:
    start = load_file(str(trained / f"{method}-start.safetensors"))
    one = load_file(str(trained / f"{method}-world1.safetensors"))
    two = load_file(str(trained / f"{method}-world2.safetensors"))
    assert one.keys() == two.keys() == start.keys() and one
    difference = norm({k: one[k] - two[k] for k in one})
    moved = norm({k: one[k] - start[k] for k in one})
    assert moved > 1e-3, f"{method}: training moved the weights only {moved:.3g}"
    relative = difference / moved
    assert relative <= TOLERANCE, f"{method}: 1 vs 2 processes differ by {relative:.3g}"
    assert all(torch.isfinite(v).all() for v in two.values())
