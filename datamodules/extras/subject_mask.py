"""``subject_mask``: where the concept is in each training image, for the subject-masked loss
(``model.init_args.background_loss_weight``), as kohya's and OneTrainer's masked training.

Each photo's mask comes from its concept's mask folder (``mask_dir``: named like the photos,
white = the concept) or, with no folder, from the segmenter configured for CLIF's augmented
data (``augmentation.segmenter``). It goes through the same scaling, crop, flip and rescale as
its photo (datamodules/transforms.py `transformed_like`), so it covers the subject wherever the
augmentation put it. A segmenter's mask that missed the subject is not used: that photo trains
unmasked, with a warning naming it. M-Aug's composed images carry no mask (all subject).
(1, H, W) floats, 1 = the concept.
"""

from __future__ import annotations

import random
import warnings
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from PIL import Image

from datamodules.extras.base import SampleExtra
from datamodules.transforms import transformed_like

if TYPE_CHECKING:
    from datamodules.personalization import PersonalizationDataModule

NO_MASKS = (
    "the subject-masked loss needs each photo's mask: give data.init_args.mask_dir (masks "
    "named like the photos, white = the concept; mask_dir in additional_concepts for the "
    "others), or data.init_args.augmentation with a segmenter (e.g. {segmenter: fallback})"
)


def photo_masks(datamodule: PersonalizationDataModule) -> list[list[Image.Image]]:
    """Each concept's photos' masks (mode L, photo-sized), from its folder or the segmenter."""
    from preparation.augmentation.sources import build_backends, segmenter_miss, working_photo
    from preparation.segmentation.masks import MaskFolder

    photos = datamodule._concept_photos(held_out_too=True)  # by the photos' own index
    if any(p.mask_dir is None for p in photos) and datamodule.augmentation is None:
        raise ValueError(NO_MASKS)
    segmenter = None
    if any(p.mask_dir is None for p in photos):
        segmenter, _ = build_backends(datamodule.augmentation, needs_masks=True)
    masks, missed = [], []
    for concept in photos:
        folder = MaskFolder(concept.mask_dir, concept.names) if concept.mask_dir else None
        own = []
        for photo, name in zip(concept.photos, concept.names, strict=True):
            if folder is not None:
                found = folder.mask_for(name, photo.size)
            else:
                working = working_photo(photo, datamodule.resolution)  # the size it trains at
                found = np.asarray(segmenter.foreground(working, concept.spec.class_word), bool)
                if segmenter_miss(found) is not None:
                    missed.append(name)
                    found = np.ones(found.shape, bool)
            own.append(Image.fromarray(np.where(found, 255, 0).astype(np.uint8), mode="L"))
        masks.append(own)
    if missed:
        warnings.warn(
            f"the segmenter missed the subject in {missed}; those photos train unmasked "
            "(give a mask_dir with their masks to mask them)",
            stacklevel=2,
        )
    return masks


class SubjectMask(SampleExtra):
    """Adds ``subject_mask`` following the sample's own augmentation."""

    provides: ClassVar[frozenset[str]] = frozenset({"subject_mask"})

    def __init__(self, masks: list[list[Image.Image]], resolution: int) -> None:
        self.masks, self.resolution = masks, resolution

    @classmethod
    def from_datamodule(cls, datamodule: PersonalizationDataModule) -> SubjectMask:
        return cls(photo_masks(datamodule), datamodule.resolution)

    def add(self, sample: dict[str, Any], concept_index: int, rng: random.Random) -> None:
        transform = sample["photo_transform"]
        if transform is None:  # a composed image: the subjects fill it
            sample["subject_mask"] = torch.ones(1, self.resolution, self.resolution)
            return
        mask = self.masks[concept_index][sample["image_index"]]
        sample["subject_mask"] = torch.from_numpy(
            transformed_like(mask, transform, self.resolution)
        )[None]
