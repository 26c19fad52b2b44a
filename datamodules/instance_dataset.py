"""The training samples: each concept's photos (cropped, flipped, rescaled as configured) with
a simple prompt, then any composed images with their own prompt (CLIF's M-Aug); index i
seeds its own augmentation, so a resumed run draws the same samples."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset

from core.concept import ConceptSpec
from core.images import crop_origin, resize_short_side, resize_to_cover, to_tensor
from datamodules.extras.base import SampleExtra
from datamodules.transforms import PhotoTransform, apply_rescale, draw_rescale
from prompts.templates import FAR_AWAY_WORDS, ZOOMED_IN_WORDS

SYNTHETIC_CLASS_WORD = "toy"


@dataclass(frozen=True)
class ComposedImage:
    """A training image with its own prompt (M-Aug) and the concept it counts for."""

    image: Image.Image
    prompt: str
    concept_index: int


@dataclass(frozen=True)
class ConceptData:
    """One concept: its token, class word, photos (None = the synthetic toy), initializer."""

    token: str = "<v1>"
    class_word: str = SYNTHETIC_CLASS_WORD  # required with photos; "toy" is the synthetic one
    instance_data_dir: str | None = None
    initializer_word: str | None = None
    mask_dir: str | None = None  # masks named like the photos (CLIF's augmented data)
    kind: str | None = None  # object, living or style (None: a subject, by its class word)

    @property
    def spec(self) -> ConceptSpec:
        return ConceptSpec(self.token, self.class_word, self.initializer_word, self.kind)


def split_photos(
    images: list[list[Image.Image]], held_out: int
) -> tuple[list[list[int]], list[list[int]]]:
    """(training, held-out) photo indices per concept: the last ``held_out`` of each concept's
    photos (ordered by file name) are held out for the validation loss."""
    if held_out < 0:
        raise ValueError(f"data.init_args.validation_split must be >= 0, got {held_out}.")
    for index, photos in enumerate(images):
        if held_out and len(photos) <= held_out:
            raise ValueError(
                f"data.init_args.validation_split is {held_out} but concept {index} has "
                f"{len(photos)} photos: at least one must stay for training; lower it."
            )
    cut = [len(photos) - held_out for photos in images]
    return (
        [list(range(c)) for c in cut],
        [list(range(c, len(photos))) for c, photos in zip(cut, images)],
    )


class InstanceDataset(Dataset):
    """Samples (image, prompt, loss mask) of the concepts; index i seeds its augmentation."""

    def __init__(
        self,
        images: list[list[Image.Image]],
        concepts: list[ConceptData],
        templates: list[str],
        resolution: int,
        random_crop: bool,
        flip_probability: float,
        rescale_augmentation: bool,
        repeats: int,
        seed: int,
        extras: list[SampleExtra] | None = None,
        composed: list[ComposedImage] | None = None,
        photos: list[list[int]] | None = None,
        sizes: dict[tuple[int, int], tuple[int, int]] | None = None,
    ) -> None:
        """``photos``: which of each concept's ``images`` give samples (None: all); a
        sample's ``image_index`` is always the photo's place in ``images``. ``sizes``: a
        photo's (width, height) crop by (concept, photo) (its aspect bucket; else square)."""
        self.sizes = dict(sizes or {})
        self.extras = list(extras or [])
        photos = photos if photos is not None else [list(range(len(i))) for i in images]
        self.items = [(c, i) for c, indices in enumerate(photos) for i in indices]
        # Images that come with their own prompt (CLIF's M-Aug), after the photos; they are
        # never flipped or rescaled (the prompt says which concept is on the left).
        self.composed = list(composed or [])
        self.items += [(item.concept_index, -1 - j) for j, item in enumerate(self.composed)]
        self.images, self.concepts, self.templates = images, concepts, templates
        if not 0.0 <= flip_probability <= 1.0:
            raise ValueError(f"flip_probability is a chance in [0, 1], got {flip_probability}.")
        self.resolution, self.random_crop = resolution, random_crop
        self.flip_probability, self.rescale_augmentation = flip_probability, rescale_augmentation
        self.repeats, self.seed = repeats, seed
        # Each photo scaled to the training size once, not at every sample (the same pixels:
        # the scaling draws nothing at random); the crop and flips still happen per sample.
        self._scaled: dict[tuple[int, int], Image.Image] = {}

    def crop_size(self, concept_index: int, image_index: int) -> tuple[int, int]:
        """The (width, height) a photo trains at: its bucket's, or the square resolution."""
        return self.sizes.get((concept_index, image_index), (self.resolution, self.resolution))

    def scaled_photo(self, concept_index: int, image_index: int) -> Image.Image:
        key = (concept_index, image_index)
        if key not in self._scaled:
            photo = self.images[concept_index][image_index]
            if key in self.sizes:
                self._scaled[key] = resize_to_cover(photo, self.sizes[key])
            else:
                self._scaled[key] = resize_short_side(photo, self.resolution)
        return self._scaled[key]

    def __len__(self) -> int:
        return len(self.items) * self.repeats

    def possible_prompts(self, concept_index: int) -> list[str]:
        """Every prompt ``__getitem__`` can give a sample of this concept."""
        prefixes = [""]
        if self.rescale_augmentation:
            prefixes += [*FAR_AWAY_WORDS, *ZOOMED_IN_WORDS]
        phrase = self.concepts[concept_index].spec.phrase
        templates = [t.format(phrase) for t in self.templates]
        own = [c.prompt for c in self.composed if c.concept_index == concept_index]
        return list(dict.fromkeys([prefix + t for t in templates for prefix in prefixes] + own))

    def __getitem__(self, index: int) -> dict[str, Any]:
        rng = random.Random(f"{self.seed}/{index}")
        concept_index, image_index = self.items[index % len(self.items)]
        if image_index < 0:
            return self._composed_sample(index, -1 - image_index)
        scaled = self.scaled_photo(concept_index, image_index)
        width, height = self.crop_size(concept_index, image_index)
        left, top = crop_origin(scaled.size, (width, height), self.random_crop, rng)
        crop = (left, top)
        image = scaled.crop((left, top, left + width, top + height))
        flipped = rng.random() < self.flip_probability
        if flipped:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            left = scaled.size[0] - width - left  # where the crop sits once mirrored
        prompt = rng.choice(self.templates).format(self.concepts[concept_index].spec.phrase)
        mask = torch.ones(1, height, width)
        cache_key = "" if self.random_crop else f"{concept_index}/{image_index}/{int(flipped)}"
        rescale = draw_rescale(self.resolution, rng) if self.rescale_augmentation else None
        if rescale is not None:
            image, mask_array = apply_rescale(image, self.resolution, rescale, (127, 127, 127))
            mask = torch.from_numpy(mask_array)[None]
            prompt, cache_key = rescale.prefix + prompt, ""
        sample = {
            "pixel_values": to_tensor(image),
            "prompts": prompt,
            "loss_mask": mask,
            "concept_index": concept_index,
            "cache_key": cache_key,
            "sample_key": index,
        }
        # Extras draw from their own stream, so adding one leaves the base sample unchanged.
        extras_rng = random.Random(f"{self.seed}/{index}/extras")
        # Which photo this is (extras keyed by photo: captions) and where the crop came from
        # (SDXL's size conditioning: original height, width, crop top, left); not batch keys.
        photo_width, photo_height = self.images[concept_index][image_index].size
        geometry = (photo_height, photo_width, top, left)
        sample["image_index"], sample["image_geometry"] = image_index, geometry
        # How the training image came from the photo, for extras that follow it (a mask).
        sample["photo_transform"] = PhotoTransform(
            scaled.size, crop, flipped, rescale, (width, height)
        )
        for extra in self.extras:
            extra.add(sample, concept_index, extras_rng)
        del sample["image_index"], sample["image_geometry"], sample["photo_transform"]
        return sample

    def _composed_sample(self, index: int, composed_index: int) -> dict[str, Any]:
        item = self.composed[composed_index]
        image = item.image
        if image.size != (self.resolution, self.resolution):
            image = image.resize((self.resolution, self.resolution), Image.Resampling.BICUBIC)
        sample = {
            "pixel_values": to_tensor(image),
            "prompts": item.prompt,
            "loss_mask": torch.ones(1, self.resolution, self.resolution),
            "concept_index": item.concept_index,
            "cache_key": f"composed/{composed_index}",
            "sample_key": index,
            "image_index": 0,
            "image_geometry": (self.resolution, self.resolution, 0, 0),
            "photo_transform": None,  # no photo: made at the training size
        }
        extras_rng = random.Random(f"{self.seed}/{index}/extras")
        for extra in self.extras:
            extra.add(sample, item.concept_index, extras_rng)
        del sample["image_index"], sample["image_geometry"], sample["photo_transform"]
        return sample
