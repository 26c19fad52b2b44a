"""What the augmented data is made from: each concept's photos with their masks and regions.

A concept's masks come from its mask folder when it has one, else from the configured
segmenter; every mask is checked (empty or all-foreground masks are errors naming the photo).
Regions for R-Aug: named parts when the ``sam`` backend can look for them, then regions by
place (superpixels, or SAM's pieces from a point grid), one region per label.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from core.concept import ConceptSpec
from core.images import resize_short_side
from datamodules.augmentation.cutout import Cutout, make_cutout
from datamodules.augmentation.settings import AugmentationSettings
from datamodules.segmentation.base import check_foreground
from datamodules.segmentation.factory import build_segmenter
from datamodules.segmentation.masks import MaskFolder
from datamodules.segmentation.regions import Region, RegionFinder, SuperpixelRegions

MIN_SEGMENTED = 0.03  # of the photo: a segmenter's mask below this missed the concept


@dataclass(frozen=True)
class ConceptPhotos:
    """One concept's inputs: its spec, photos, their file names, and its mask folder."""

    spec: ConceptSpec
    photos: list[Image.Image]
    names: list[str]
    mask_dir: str | None = None

    def __post_init__(self) -> None:
        if not self.photos:
            raise ValueError(
                f"concept {self.spec.token!r} has no photos; give it a folder with its photos."
            )


@dataclass(frozen=True)
class SegmentedPhoto:
    photo: Image.Image  # scaled to the working size
    mask: np.ndarray  # (H, W) bool
    name: str

    def cutout(self, phrase: str) -> Cutout:
        return make_cutout(self.photo, self.mask, phrase)


def working_photo(photo: Image.Image, size: int) -> Image.Image:
    """The photo with its shorter side at `size` (cut-outs are never pasted larger)."""
    return resize_short_side(photo.convert("RGB"), size)


def build_backends(settings: AugmentationSettings, needs_masks: bool) -> tuple[Any, RegionFinder]:
    """(foreground segmenter or None when every concept has masks, R-Aug's region finder).
    SAM's models load only when chosen, once for both roles."""
    if settings.segmenter == "sam":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"  # SAM-H is slow on a CPU
        sam = build_segmenter("sam", sam_model=settings.sam_model,
                              grounding_model=settings.grounding_model, device=device)  # fmt: skip
        return sam, sam
    return (build_segmenter("fallback") if needs_masks else None), SuperpixelRegions()


def segment_concept(
    concept: ConceptPhotos, size: int, segmenter: Any | None
) -> list[SegmentedPhoto]:
    """Each photo at the working size with its checked mask. A segmenter's mask under
    MIN_SEGMENTED of the photo is taken as a failure (the fallback keeps a cat's ear when the
    dark body matches the dark ground): that photo is left out with a warning naming it."""
    folder = MaskFolder(concept.mask_dir, concept.names) if concept.mask_dir else None
    segmented, failed = [], []
    for photo, name in zip(concept.photos, concept.names, strict=True):
        photo = working_photo(photo, size)
        if folder is not None:
            mask = folder.mask_for(name, photo.size)
        else:
            where = f"photo {name} of {concept.spec.token!r} (segmenter output)"
            mask = check_foreground(segmenter.foreground(photo, concept.spec.class_word), where)
            if mask.mean() < MIN_SEGMENTED:
                failed.append(name)
                continue
        segmented.append(SegmentedPhoto(photo, mask, name))
    if failed and not segmented:
        raise ValueError(
            f"segmentation found {concept.spec.token!r} in none of its photos {failed}; give "
            "masks named like the photos (its mask_dir) or use augmentation.segmenter: sam."
        )
    if failed:
        warnings.warn(
            f"segmentation kept under {MIN_SEGMENTED:.0%} of photo(s) {failed} of "
            f"{concept.spec.token!r}; they are left out of the augmented data (give masks "
            "named like the photos in the concept's mask_dir to use them).",
            stacklevel=2,
        )
    return segmented


def one_region_per_label(regions: list[Region]) -> list[Region]:
    """Regions that share a label become one (two "upper left" superpixels are one place)."""
    merged: dict[tuple[str, bool], Region] = {}
    for region in regions:
        key = (region.label, region.named)
        if key in merged:
            union = merged[key].mask | region.mask
            merged[key] = dataclasses.replace(merged[key], mask=union)
        else:
            merged[key] = region
    return list(merged.values())


def regions_of(
    photo: SegmentedPhoto, part_names: list[str], num_regions: int, finder: RegionFinder
) -> list[Region]:
    """R-Aug's regions of one photo: its named parts found (SAM only), then regions by place;
    one region per label."""
    regions = finder.find_parts(photo.photo, photo.mask, part_names)
    regions += finder.regions(photo.photo, photo.mask, num_regions)
    return one_region_per_label(regions)


def photo_names(folder: str | Path | None, count: int) -> list[str]:
    """The photos' file names (the synthetic toy's are numbered)."""
    if folder is None:
        return [f"synthetic_{i:02d}.png" for i in range(count)]
    from datamodules.instance_images import list_image_files

    return [file.name for file in list_image_files(folder)]
