"""CLIF's contrastive pairs: one augmented image and its prompt per sample.

Built when the ``clif`` loss (or CLIF's stage 1) asks for ``clif_pixel_values`` /
``clif_prompts``. The pairs are the DataModule's augmented set (G- and R-Aug by default,
``augmentation.contrastive_kinds``), read into memory once; each sample draws one from its own
rng, so a resumed run draws the same pairs.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any, ClassVar

from PIL import Image

from core.images import to_tensor
from datamodules.extras.base import SampleExtra

if TYPE_CHECKING:
    from datamodules.personalization import PersonalizationDataModule


class ContrastivePairs(SampleExtra):
    """Provides ``clif_pixel_values`` (3, H, W) in [-1, 1] and ``clif_prompts``."""

    provides: ClassVar[frozenset[str]] = frozenset({"clif_pixel_values", "clif_prompts"})

    def __init__(self, images: list[Image.Image], prompts: list[str], resolution: int) -> None:
        if not images or len(images) != len(prompts):
            raise ValueError("ContrastivePairs needs one prompt per image, and some images.")
        size = (resolution, resolution)
        self.images = [i if i.size == size else i.resize(size, Image.Resampling.BICUBIC)
                       for i in images]  # fmt: skip
        self.prompts = prompts

    @classmethod
    def from_datamodule(cls, datamodule: PersonalizationDataModule) -> ContrastivePairs:
        built = datamodule.augmented_set()
        settings = datamodule.augmentation
        assert settings is not None  # augmented_set() raised otherwise
        items = built.of_kind(*settings.contrastive_kinds)
        if not items:
            raise ValueError(
                f"the augmented set has no {list(settings.contrastive_kinds)} images to contrast; "
                "raise augmentation.g_aug / r_aug (or m_aug with two concepts)."
            )
        images = [built.image(item) for item in items]
        return cls(images, [item.prompt for item in items], int(datamodule.resolution))

    def add(self, sample: dict[str, Any], concept_index: int, rng: random.Random) -> None:
        index = rng.randrange(len(self.images))
        sample["clif_pixel_values"] = to_tensor(self.images[index])
        sample["clif_prompts"] = self.prompts[index]
