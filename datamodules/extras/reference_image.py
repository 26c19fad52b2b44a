"""``reference_pixel_values``: another photo of the sample's subject, for image-conditioned
baselines (VisualEncoder). The model sees the reference, denoises the target.

A different photo than the target when the subject has several: with the target itself as
reference an encoder can learn to copy the picture rather than the subject's identity. The
reference is centre-cropped at the DataModule's resolution, flipped like the targets, and in
[-1, 1] like ``pixel_values``; the model resizes and normalises it for its own image encoder,
so the DataModule stays independent of which encoder that is.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any, ClassVar

from PIL import Image

from core.images import resize_and_crop, to_tensor
from datamodules.extras.base import SampleExtra

if TYPE_CHECKING:
    from datamodules.personalization import PersonalizationDataModule


class ReferenceImage(SampleExtra):
    """Adds ``reference_pixel_values`` (3, R, R): another photo of the same subject."""

    provides: ClassVar[frozenset[str]] = frozenset({"reference_pixel_values"})

    def __init__(
        self, images: list[list[Image.Image]], resolution: int, flip_probability: float
    ) -> None:
        self.images = images
        self.resolution = resolution
        self.flip_probability = flip_probability

    @classmethod
    def from_datamodule(cls, datamodule: PersonalizationDataModule) -> SampleExtra:
        return cls(datamodule.images, datamodule.resolution, datamodule.flip_probability)

    def choose(self, concept_index: int, image_index: int | None, rng: random.Random) -> int:
        """Index of the reference photo: uniform over the subject's photos but the target."""
        count = len(self.images[concept_index])
        if count == 1 or image_index is None:
            return rng.randrange(count)
        other = rng.randrange(count - 1)
        return other + 1 if other >= image_index else other

    def add(self, sample: dict[str, Any], concept_index: int, rng: random.Random) -> None:
        index = self.choose(concept_index, sample.get("image_index"), rng)
        image = resize_and_crop(self.images[concept_index][index], self.resolution, False, rng)
        if rng.random() < self.flip_probability:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        sample["reference_pixel_values"] = to_tensor(image)
