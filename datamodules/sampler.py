"""A shuffling sampler that resumes mid-epoch, so `fit --ckpt_path` continues exactly.

Lightning restarts an interrupted epoch's data from its first batch unless the loader is
resumable. This sampler is a `DistributedSampler` (so Lightning leaves it alone under DDP and
calls its ``set_epoch``), skips the batches the restored loop already consumed, and yields
``epoch * len(dataset) + index`` so the dataset can seed each sample's augmentation by it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sized
from typing import Any

from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader, DistributedSampler

from datamodules.buckets import bucket_order


class ResumableSampler(DistributedSampler):
    """Seeded per-epoch shuffle over this rank's share, skipping already-consumed batches."""

    def __init__(
        self,
        dataset: Sized,
        num_replicas: int,
        rank: int,
        seed: int,
        shuffle: bool = True,
        skip_samples: int = 0,
        offset_by_epoch: bool = True,
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        self.skip_samples, self.offset_by_epoch = skip_samples, offset_by_epoch

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        skip, self.skip_samples = self.skip_samples, 0  # only the resumed epoch is partial
        # Each epoch's samples get keys of their own (augmentation, noise); a validation set
        # keeps its keys, so its noise is the same at every validation.
        epoch = self.epoch if self.offset_by_epoch else 0
        offset = epoch * len(self.dataset)  # type: ignore[arg-type]
        return iter([offset + i for i in indices[skip:]])


class BucketSampler(ResumableSampler):
    """`ResumableSampler` over `bucket_order`'s epoch order: whole global batches of one
    bucket, rank r taking every world-th sample of it (datamodules/buckets.py)."""

    def __init__(
        self, dataset: Sized, bucket_of: list[int], batch_size: int, **kwargs: Any
    ) -> None:
        super().__init__(dataset, **kwargs)
        self.bucket_of, self.group = bucket_of, batch_size * self.num_replicas
        kept = len(bucket_order(bucket_of, self.group, self.seed, 0, shuffle=False))
        self.num_samples, self.total_size = kept // self.num_replicas, kept

    def __iter__(self) -> Iterator[int]:
        order = bucket_order(self.bucket_of, self.group, self.seed, self.epoch, self.shuffle)
        share = order[self.rank :: self.num_replicas]
        skip, self.skip_samples = self.skip_samples, 0
        epoch = self.epoch if self.offset_by_epoch else 0
        offset = epoch * len(self.dataset)  # type: ignore[arg-type]
        return iter([offset + i for i in share[skip:]])


class ResumableDataLoader(DataLoader):
    """A DataLoader that declares itself resumable to Lightning.

    The position comes from the restored loop (the sampler's ``skip_samples``); what the
    checkpoint keeps is what must match for the resumed draws to be the same ones.
    """

    def state_dict(self) -> dict[str, int]:
        return {"seed": int(self.sampler.seed), "dataset_length": len(self.dataset)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        current = self.state_dict()
        if state != current:
            rank_zero_warn(
                f"Resuming with different data ({state} in the checkpoint, {current} now): "
                "the run continues, but not with the samples an uninterrupted run would draw."
            )


def resumable_loader(
    dataset: Sized,
    trainer: Any,
    *,
    batch_size: int,
    num_workers: int,
    seed: int,
    shuffle: bool,
    skip_batches: int,
    offset_by_epoch: bool = True,
    bucket_of: list[int] | None = None,
) -> ResumableDataLoader:
    """A resumable loader over this rank's share, so every datamodule shards and resumes alike.

    Under DDP each rank takes every world_size-th sample of the epoch's order, so global
    batch k holds the same samples as one process's batch k at the same global batch size.
    ``bucket_of`` (each dataset index's aspect bucket): batches of one bucket each.
    """
    shares = {
        "num_replicas": trainer.world_size if trainer else 1,
        "rank": trainer.global_rank if trainer else 0,
        "seed": seed,
        "shuffle": shuffle,
        "offset_by_epoch": offset_by_epoch,
    }
    sampler = (
        ResumableSampler(dataset, **shares)
        if bucket_of is None
        else BucketSampler(dataset, bucket_of, batch_size, **shares)
    )
    # A checkpoint taken on the epoch's last batch restores a finished epoch, which Lightning
    # rolls over into the next one only after it has asked for this loader: skipping the
    # finished epoch's batches then would empty the next epoch and shift every later one.
    batches_per_epoch = math.ceil(sampler.num_samples / batch_size)
    sampler.skip_samples = skip_batches * batch_size if skip_batches < batches_per_epoch else 0
    return ResumableDataLoader(
        dataset,  # type: ignore[arg-type]
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        persistent_workers=False,
    )


def batches_done(trainer: Any) -> int:
    """Batches of this epoch a resumed fit loop has already consumed (0 unless restarting).

    On an ordinary (re)load the counter may still hold the previous epoch's, so it is ignored.
    """
    if trainer is not None and trainer.fit_loop.epoch_loop.restarting:
        return trainer.fit_loop.epoch_loop.batch_progress.current.ready  # type: ignore[no-any-return]
    return 0
