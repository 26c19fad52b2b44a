"""Metric states synced across 2 processes (gloo) give exactly the single-process values."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from metric_fakes import (
    FakeBlipEncoder,
    FakeClipModel,
    FakeClipProcessor,
    FakeVggEncoder,
    id_images,
    stack_features,
)

from metrics.blip_t import BLIPTextScore
from metrics.clip_i import CLIPImageSimilarity
from metrics.clip_t import CLIPTextScore
from metrics.dino_i import DINOImageSimilarity
from metrics.gram_d import GramDistance

NUM_GENERATED = 7  # odd: the ranks get 4 and 3 images, as the unpadded test sampler gives them


def metric_values(rank: int, world_size: int) -> dict[str, float]:
    """Every metric on fixed data; this rank updates with items rank, rank + world, ..."""
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(NUM_GENERATED + 3, 8, generator=gen, dtype=torch.float64)
    texts = torch.randn(NUM_GENERATED, 8, generator=gen) + features[:NUM_GENERATED].float()
    queries = torch.randn(NUM_GENERATED, 3, 8, generator=gen, dtype=torch.float64)
    maps = [[torch.randn(4, 3, 3, generator=gen, dtype=torch.float64)] for _ in range(10)]
    mine = list(range(rank, NUM_GENERATED, world_size))
    prompts = [f"p{i}" for i in mine]
    fake_clip = (FakeClipModel(features[:NUM_GENERATED].float(), texts), FakeClipProcessor())
    metrics = {
        "clip_t": CLIPTextScore(model_and_processor=lambda: fake_clip),
        "clip_i": CLIPImageSimilarity(encoder=stack_features),
        "dino_i": DINOImageSimilarity(encoder=stack_features, scale=100.0),
        "blip_t": BLIPTextScore(backend="blip2", encoder=FakeBlipEncoder(queries, texts.double())),
        "gram_d": GramDistance(encoder=FakeVggEncoder(maps)),
    }
    references = list(features[NUM_GENERATED:])
    for key, metric in metrics.items():
        if key in ("clip_i", "dino_i"):
            metric.set_references(references, "dog")
            metric.update(features[mine])
        elif key == "gram_d":
            metric.set_references(list(id_images([7, 8, 9])), "style")
            metric.update(id_images(mine))
        else:
            metric.update(id_images(mine), prompts)
    return {key: metric.compute().item() for key, metric in metrics.items()}


def _worker(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)  # as DataLoader workers do: a forked child must not reuse OpenMP
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size
    )
    try:
        torch.save(metric_values(rank, world_size), Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_process_sync_equals_one_process(tmp_path: Path) -> None:
    single = metric_values(rank=0, world_size=1)
    # fork where there is one: the children start with everything imported (spawn: ~10 s more).
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    init = str(tmp_path / "init")
    mp.start_processes(_worker, (2, init, str(tmp_path)), nprocs=2, join=True, start_method=method)
    for rank in (0, 1):
        synced = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert synced.keys() == single.keys()
        for key, value in single.items():
            assert synced[key] == pytest.approx(value, rel=1e-6, abs=1e-9), (rank, key)
    # The shards alone differ from the whole, so the sync is what made them equal.
    alone = metric_values(rank=0, world_size=2)
    assert any(alone[key] != pytest.approx(single[key]) for key in single)
