"""What the augmented data is made from: each concept's photos with their masks and regions.

A concept's masks come from its mask folder when it has one, else from the configured
segmenter. A user's mask that is empty or all foreground is an error naming the file (the
user can redraw it); a segmenter's that missed leaves its photo out with a warning naming it
(the user cannot fix the segmenter's output), and only a concept left with no photo stops.
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
from preparation.augmentation.cutout import Cutout, make_cutout
from preparation.augmentation.settings import AugmentationSettings
from preparation.segmentation.base import MAX_FOREGROUND
from preparation.segmentation.factory import build_segmenter
from preparation.segmentation.masks import MaskFolder
from preparation.segmentation.regions import Region, RegionFinder, SuperpixelRegions

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


def segmenter_miss(mask: np.ndarray) -> str | None:
    """Why a segmenter's mask missed the concept ("kept 0.3% of it", "took all of it"), or
    None when it is usable. A miss is no user error: the photo is left out, not the run."""
    share = float(np.asarray(mask, bool).mean()) if np.size(mask) else 0.0
    if share < MIN_SEGMENTED:
        return f"kept {share:.1%} of it"
    if share > MAX_FOREGROUND:
        return "took all of it"
    return None


def _fixes(concept: ConceptPhotos) -> str:
    """The two ways past a segmenter's misses, for messages."""
    first = concept.names[0]
    return (
        f"give {concept.spec.token!r} a mask_dir with masks named like the photos (photo "
        f"{first}: mask {Path(first).stem}.png, white = the concept; data.init_args.mask_dir "
        "for the first concept, mask_dir in its additional_concepts entry for the others), or "
        "use augmentation.segmenter: sam"
    )


def segment_concept(
    concept: ConceptPhotos, size: int, segmenter: Any | None
) -> list[SegmentedPhoto]:
    """Each photo at the working size with its mask. A user's mask file is checked (errors
    name the file); a segmenter's mask that missed (under MIN_SEGMENTED or nearly the whole
    photo: the fallback keeps a cat's ear when the dark body matches the dark ground) leaves
    its photo out with a warning naming it; when no photo is left, the error names them all
    and the fixes."""
    folder = MaskFolder(concept.mask_dir, concept.names) if concept.mask_dir else None
    segmented, failed = [], []
    for original, name in zip(concept.photos, concept.names, strict=True):
        photo = working_photo(original, size)
        if folder is not None:
            mask = folder.mask_for(name, photo.size, original.size)
        else:
            mask = np.asarray(segmenter.foreground(photo, concept.spec.class_word), bool)
            miss = segmenter_miss(mask)
            if miss is not None:
                failed.append(f"{name} ({miss})")
                continue
        segmented.append(SegmentedPhoto(photo, mask, name))
    if failed and not segmented:
        raise ValueError(
            f"segmentation missed {concept.spec.token!r} ({concept.spec.class_word}) in every "
            f"photo at {size} px: {', '.join(failed)}; {_fixes(concept)}."
        )
    if failed:
        warnings.warn(
            f"segmentation missed {concept.spec.token!r} ({concept.spec.class_word}) in "
            f"photo(s) {', '.join(failed)} at {size} px; they are left out of the augmented "
            f"data. To use them, {_fixes(concept)}.",
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
    from preparation.photos import list_image_files

    return [file.name for file in list_image_files(folder)]
