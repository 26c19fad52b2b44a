"""Aspect-ratio buckets: kohya's bucket set; each photo lands in the bucket nearest its aspect
(within one bucket step); batches hold one bucket; two ranks' batches k together are one
process's batch k; a run on buckets (SD and SDXL, whose size conditioning follows the crop)
resumes mid-epoch exactly; a batch no bucket can fill is one clear error."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from baseline_checks import assert_resume_is_exact
from helpers import ASPECT_SIZES as SIZES
from helpers import optimizer_with_lr, write_photos

from datamodules.buckets import BucketSettings, bucket_sizes, nearest_bucket
from datamodules.personalization import PersonalizationDataModule
from datamodules.sampler import resumable_loader
from models import LoRA

STEP = BucketSettings(step=8)


def bucketed(root: Path, batch_size: int = 2, repeats: int = 4) -> PersonalizationDataModule:
    return PersonalizationDataModule(
        instance_data_dir=str(write_photos(root / "photos")), class_word="robot",
        resolution=32, batch_size=batch_size, repeats=repeats, buckets=STEP,
    )  # fmt: skip


def test_the_buckets_are_kohyas_and_each_photo_takes_the_nearest() -> None:
    sizes = bucket_sizes(32, STEP)
    assert (32, 32) in sizes and all(w * h <= 32 * 32 and w % 8 == h % 8 == 0 for w, h in sizes)
    assert all(max(w, h) / min(w, h) <= 2 for w, h in sizes)
    aspects = [math.log(w / h) for w, h in sizes]
    for photo in SIZES:
        chosen = nearest_bucket(photo, sizes)
        aspect = math.log(photo[0] / photo[1])
        # within one bucket step: between the chosen bucket's neighbours' aspects
        low = aspects[max(chosen - 1, 0)]
        high = aspects[min(chosen + 1, len(aspects) - 1)]
        assert low <= aspect <= high or chosen in (0, len(sizes) - 1)


def test_every_batch_holds_one_bucket_and_covers_the_photos(tmp_path: Path) -> None:
    data = bucketed(tmp_path)
    seen = set()
    for batch in data.train_dataloader():
        seen.add(tuple(batch["pixel_values"].shape[-2:]))
        assert batch["pixel_values"].shape[0] == 2 and batch["loss_mask"].shape[-2:] == batch[
            "pixel_values"
        ].shape[-2:]
    expected = {(h, w) for w, h in data.photo_sizes.values()}
    assert seen == expected and len(seen) >= 3


@pytest.mark.smoke  # the newest allowed versions too
def test_two_ranks_batch_k_is_one_process_batch_k(tmp_path: Path) -> None:
    data = bucketed(tmp_path, batch_size=2, repeats=8)
    dataset = data._dataset(augment=True, repeats=8)

    class World:
        def __init__(self, size: int, rank: int) -> None:
            self.world_size, self.global_rank = size, rank

    def keys(world: World, batch_size: int) -> list[list[int]]:
        items = dataset.items
        sizes = [dataset.crop_size(*items[i % len(items)]) for i in range(len(dataset))]
        known = sorted(set(sizes))
        loader = resumable_loader(
            dataset, world, batch_size=batch_size, num_workers=0, seed=0, shuffle=True,
            skip_batches=0, bucket_of=[known.index(s) for s in sizes],
        )  # fmt: skip
        return [batch["sample_key"].tolist() for batch in loader]

    one = keys(World(1, 0), 4)
    rank0, rank1 = keys(World(2, 0), 2), keys(World(2, 1), 2)
    assert len(one) == len(rank0) == len(rank1)
    for whole, first, second in zip(one, rank0, rank1):
        assert sorted(whole) == sorted(first + second)


def test_a_bucketed_run_resumes_exactly(tmp_path: Path) -> None:
    def build() -> tuple[LoRA, PersonalizationDataModule]:
        data = bucketed(tmp_path / f"data{len(list(tmp_path.glob('data*')))}")
        module = LoRA(concepts=data.concepts, optimizer=optimizer_with_lr(1e-2), train_tokens=True)
        return module, data

    assert_resume_is_exact(build, tmp_path)


def test_sdxl_size_conditioning_follows_the_bucket(tmp_path: Path) -> None:
    data = bucketed(tmp_path)
    module = LoRA(pretrained_model_name_or_path="tiny-sdxl", concepts=data.concepts)
    module.attach_datamodule(data)
    batch = next(iter(data.train_dataloader()))
    factor = module.vae_scale_factor
    latents = torch.zeros(2, 4, *(side // factor for side in batch["pixel_values"].shape[-2:]))
    ids = module.size_ids(batch, latents)
    height, width = batch["pixel_values"].shape[-2:]
    assert ids[:, 4:].tolist() == [[height, width]] * 2  # the target size is the bucket's
    assert ids[:, 0:2].tolist() == batch["original_size"].tolist()
    module.compute_losses(batch, module.sample_draws(batch, 0))["total"].backward()


def test_a_batch_no_bucket_can_fill_is_refused(tmp_path: Path) -> None:
    data = bucketed(tmp_path, batch_size=8, repeats=1)
    with pytest.raises(ValueError, match="fewer than the global batch of 8"):
        data.train_dataloader()
