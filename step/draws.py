"""Random draws keyed by the sample, so N processes at global batch B equal one process at B.

A training sample's VAE latent sample, noise, noise offset and timestep come from a generator
of its own, seeded by (seed, the sample's key, salt). The key is the sample's position in the
run's sample stream (``epoch * len(dataset) + index``, the DataModule's ``sample_key``), which
does not depend on the rank that holds the sample, on the local batch size or on the step: the
same sample gets the same noise on one process and on eight, and again after a resume.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

# Salts that keep a sample's streams apart: its instance draws, its prior (class) sample's
# draws, and the fixed validation noise.
INSTANCE_SALT, PRIOR_SALT, VALIDATION_SALT = 0, 1, 2


def seed_for(seed: int, key: int, salt: int) -> int:
    """A 63-bit seed mixing the run seed, the sample key and the salt (distinct for each)."""
    mixed = ((int(seed) * 1_000_003 + int(key)) * 1009 + salt) * 7 + 3
    return mixed % (2**63 - 1)


class SampleDraws:
    """One generator per sample; each draw takes one value (or tensor) per sample, in order."""

    def __init__(
        self, seed: int, keys: Sequence[int], salt: int, device: torch.device | str
    ) -> None:
        self.seed, self.keys, self.salt, self.device = seed, [int(k) for k in keys], salt, device
        self.generators = []
        for key in self.keys:
            generator = torch.Generator(device=device)
            generator.manual_seed(seed_for(seed, key, salt))
            self.generators.append(generator)

    def __len__(self) -> int:
        return len(self.generators)

    def with_salt(self, salt: int) -> SampleDraws:
        """The same samples' draws of another stream (their prior samples', say)."""
        return SampleDraws(self.seed, self.keys, salt, self.device)

    def __add__(self, other: SampleDraws) -> SampleDraws:
        """Both sets of samples, in order (the draws continue each one's own stream)."""
        joined = SampleDraws(self.seed, [], self.salt, self.device)
        joined.keys, joined.generators = self.keys + other.keys, self.generators + other.generators
        return joined

    def randn(self, shape: Sequence[int]) -> torch.Tensor:
        """A (num_samples, *shape) standard normal tensor, row i from sample i's generator."""
        shape = tuple(shape)
        return torch.stack(
            [torch.randn(shape, generator=g, device=self.device) for g in self.generators]
        )

    def each(self, draw: Callable[[torch.Generator], torch.Tensor]) -> torch.Tensor:
        """``draw(generator)`` per sample (a (1, ...) tensor each), concatenated."""
        return torch.cat([draw(g) for g in self.generators])

    def randint(self, high: int) -> torch.Tensor:
        """One integer in [0, high) per sample."""
        return torch.cat(
            [torch.randint(0, high, (1,), generator=g, device=self.device) for g in self.generators]
        )
