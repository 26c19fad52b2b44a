"""The storage counter behind scripts/estimate_sdxl_memory.py: it counts what an operator
allocates, forgets it when freed, and never counts a storage that existed before (a weight's
transposed view shares the weight's storage)."""

from __future__ import annotations

import sys

import torch
from helpers import REPO_ROOT
from torch._subclasses.fake_tensor import FakeTensorMode

sys.path.insert(0, str(REPO_ROOT / "scripts"))
from estimate_sdxl_memory import LiveBytes  # noqa: E402  (a script, not a package)

MIB = 2**20


def test_it_counts_new_storages_until_freed_and_never_known_ones() -> None:
    with FakeTensorMode():
        weight = torch.randn(1024, 1024)  # 4 MiB, there before

        def phase() -> None:
            x = torch.randn(256, 1024)  # 1 MiB
            y = torch.nn.functional.linear(x, weight)  # 1 MiB, via weight.t(), a view
            del x
            z = y * 2  # 1 MiB while y lives: 2 MiB at most
            del y, z

        tracker = LiveBytes([weight])
        with tracker:
            phase()
        assert (tracker.peak, tracker.live) == (2 * MIB, 0)
        unaware = LiveBytes([])  # not told of the weight: its view counts it
        with unaware:
            phase()
        assert unaware.peak == 6 * MIB
