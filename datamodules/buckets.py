"""Aspect-ratio buckets: each photo trains at the size of about ``resolution``² pixels whose
aspect ratio is nearest its own, instead of a square crop; every batch holds one bucket.

The buckets are kohya's: widths in steps of ``step`` pixels, each with the tallest height (a
multiple of ``step``) that keeps width x height <= resolution², aspect at most ``max_aspect``.
A photo is scaled to cover its bucket and cropped (centre, or random with ``random_crop``).

The epoch's order (`bucket_order`): each bucket's samples shuffled by (seed, epoch), cut into
groups of the global batch (batch size x processes; a bucket's remainder waits for the next
epoch's shuffle), the groups shuffled. Rank r takes every world-th sample of that order, as
the plain sampler does, so global batch k is the same samples under any world size, all in
one bucket; a resumed epoch skips its consumed batches of the same order.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass


@dataclass(frozen=True)
class BucketSettings:
    """``step``: the buckets' side increment (a multiple of the VAE's factor, 64 as kohya's);
    ``max_aspect``: the longest side over the shortest."""

    step: int = 64
    max_aspect: float = 2.0

    def __post_init__(self) -> None:
        if self.step < 8 or self.step % 8:
            raise ValueError(f"buckets.step must be a multiple of 8 (64 usual), got {self.step}.")
        if self.max_aspect < 1:
            raise ValueError(f"buckets.max_aspect must be >= 1, got {self.max_aspect}.")


def bucket_sizes(resolution: int, settings: BucketSettings) -> list[tuple[int, int]]:
    """The (width, height) buckets for ``resolution``, ordered by aspect ratio."""
    area, step = resolution * resolution, settings.step
    sizes = set()
    for width in range(step, int(area / step) + 1, step):
        height = (area // width) // step * step
        if height >= step and max(width, height) / min(width, height) <= settings.max_aspect:
            sizes.add((width, height))
    if not sizes:
        raise ValueError(
            f"no bucket of buckets.step {step} fits resolution {resolution}; lower the step."
        )
    return sorted(sizes, key=lambda size: size[0] / size[1])


def nearest_bucket(size: tuple[int, int], buckets: list[tuple[int, int]]) -> int:
    """The index of the bucket whose aspect ratio is nearest (in log ratio) to ``size``'s."""
    aspects = [math.log(width / height) for width, height in buckets]
    aspect = math.log(size[0] / size[1])
    return min(range(len(buckets)), key=lambda i: abs(aspects[i] - aspect))


def bucket_order(
    bucket_of: list[int], group: int, seed: int, epoch: int, shuffle: bool
) -> list[int]:
    """The epoch's global order of dataset indices, in whole groups of one bucket each."""
    rng = random.Random(f"buckets/{seed}/{epoch}")
    members: dict[int, list[int]] = {}
    for index, bucket in enumerate(bucket_of):
        members.setdefault(bucket, []).append(index)
    groups = []
    for bucket in sorted(members):
        indices = members[bucket]
        if shuffle:
            rng.shuffle(indices)
        whole = len(indices) // group * group
        groups += [indices[start : start + group] for start in range(0, whole, group)]
    if shuffle:
        rng.shuffle(groups)
    return [index for chunk in groups for index in chunk]


def check_buckets_fill(bucket_of: list[int], group: int, sizes: list[tuple[int, int]]) -> None:
    """Every bucket in use must fill one global batch an epoch, or its photos never train."""
    counts: dict[int, int] = {}
    for bucket in bucket_of:
        counts[bucket] = counts.get(bucket, 0) + 1
    short = {sizes[b]: n for b, n in counts.items() if n < group}
    if short:
        (width, height), count = next(iter(short.items()))
        raise ValueError(
            f"bucket {width}x{height} gets {count} samples an epoch, fewer than the global batch "
            f"of {group} (batch_size x processes), so its photos would never train; lower "
            "data.init_args.batch_size, raise data.init_args.repeats, or leave buckets out."
        )
