"""Class images for prior preservation: one per sample, with the class prompt.

Built when prior preservation (or a regularizer) asks for ``class_pixel_values`` /
``class_prompts``. By then the DataModule's setup has generated any missing images with the
model's pipeline (preparation/model_images.py), so a short folder here means the DataModule
was used without a trainer and model. Each sample draws its class image from its own rng and
gets the instance images' resolution, crop and flip handling (no random rescale: class images
have no loss mask).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from PIL import Image

from core.images import resize_and_crop, to_tensor
from core.options import clear_null_strings
from datamodules.extras.base import SampleExtra
from preparation.model_images import list_class_images
from preparation.photos import load_rgb_image

if TYPE_CHECKING:
    from datamodules.personalization import PersonalizationDataModule


OPTION = "data.init_args.class_images"


@dataclass(frozen=True)
class ClassImageOptions:
    """Prior preservation's class images (DataModule option ``class_images``); used only when
    the model trains with them (``prior_loss_weight`` > 0 or a regularizer asking for them).

    Attributes:
        folder: where the class images are; missing ones are generated there by the base model
            before training. ``{class_word}`` in it becomes the (first) class word, so one
            config serves every subject: ``class_images/{class_word}``.
        prompt: the class images' prompt; None: "a photo of a <class word>". It must name a
            concept's class word (else the prior would show another class).
        count: how many class images to use (and to generate if missing).
        generation_steps: sampling steps per generated class image (DDIM, cfg 7.5).
    """

    folder: str | None = None
    prompt: str | None = None
    count: int = 100
    generation_steps: int = 50

    def __post_init__(self) -> None:
        clear_null_strings(self, "folder", "prompt")
        if self.count < 1:
            raise ValueError(f"{OPTION}.count must be >= 1, got {self.count}.")
        if self.generation_steps < 1:
            raise ValueError(
                f"{OPTION}.generation_steps must be >= 1, got {self.generation_steps}."
            )
        if self.folder is not None and Path(self.folder).is_file():
            raise ValueError(f"{OPTION}.folder {self.folder!r} is a file; give a folder.")

    def for_classes(self, class_words: list[str]) -> ClassImageOptions:
        """These options with the prompt checked (or defaulted) and ``{class_word}`` in the
        folder replaced by the first class word."""
        folder = self.folder
        if folder is not None:
            folder = folder.replace("{class_word}", class_words[0].replace(" ", "_"))
        return replace(self, folder=folder, prompt=class_prompt_for(class_words, self.prompt))


def class_prompt_for(class_words: list[str], class_prompt: str | None) -> str:
    """The class images' prompt: ``class_prompt`` if it names a class word, else an error;
    None: "a photo of a <first class word>"."""
    if class_prompt is None:
        return f"a photo of a {class_words[0]}"
    words = re.findall(r"[\w'-]+", class_prompt.lower())
    named = [w for w in class_words if _contains(words, re.findall(r"[\w'-]+", w.lower()))]
    if not named:
        raise ValueError(
            f"{OPTION}.prompt {class_prompt!r} does not name the class word "
            f"{' or '.join(repr(w) for w in dict.fromkeys(class_words))}: the prior images "
            f"would show another class. Set it to e.g. 'a photo of a {class_words[0]}', or "
            "leave it unset (that is the default)."
        )
    return class_prompt


def _contains(words: list[str], phrase: list[str]) -> bool:
    return any(words[i : i + len(phrase)] == phrase for i in range(len(words)))


def _shorter_side_to(image: Image.Image, resolution: int) -> Image.Image:
    """Keep class images at the training size only: ``resize_and_crop`` then skips resizing."""
    width, height = image.size
    scale = resolution / min(width, height)
    size = (max(resolution, round(width * scale)), max(resolution, round(height * scale)))
    return image.resize(size, Image.Resampling.BICUBIC)


class ClassImages(SampleExtra):
    """Provides ``class_pixel_values`` (3, H, W), ``class_prompts`` and ``class_cache_key``."""

    provides: ClassVar[frozenset[str]] = frozenset(
        {"class_pixel_values", "class_prompts", "class_cache_key"}
    )

    def __init__(
        self,
        images: list[Image.Image],
        prompt: str,
        resolution: int,
        random_crop: bool = False,
        flip_probability: float = 0.0,
    ) -> None:
        if not images:
            raise ValueError("ClassImages needs at least one image.")
        self.images, self.prompt, self.resolution = images, prompt, resolution
        self.random_crop, self.flip_probability = random_crop, flip_probability

    @classmethod
    def from_datamodule(cls, datamodule: PersonalizationDataModule) -> ClassImages:
        options: ClassImageOptions = datamodule.class_images
        folder, wanted = options.folder, options.count
        if folder is None:
            raise ValueError(
                f"set {OPTION}.folder to a folder for the class images (missing ones are "
                "generated there before training), e.g. class_images/{class_word}."
            )
        if not Path(folder).is_dir():
            raise ValueError(
                f"class folder {folder!r} does not exist; the DataModule's setup generates it "
                f"with the model (train through the Trainer), or point {OPTION}.folder at a "
                "folder of images."
            )
        files = list_class_images(folder)
        if len(files) < wanted:
            raise ValueError(
                f"class folder {folder!r} holds {len(files)} images, {OPTION}.count is "
                f"{wanted}; the DataModule's setup generates missing ones with the model (train "
                "through the Trainer), or add images, or lower the count."
            )
        resolution = int(datamodule.resolution)
        # The images used are read now (an unreadable one is named), before training.
        images = [_shorter_side_to(load_rgb_image(f), resolution) for f in files[:wanted]]
        return cls(
            images,
            str(options.prompt),
            resolution,
            random_crop=bool(datamodule.random_crop),
            flip_probability=float(datamodule.flip_probability),
        )

    def add(self, sample: dict[str, Any], concept_index: int, rng: random.Random) -> None:
        index = rng.randrange(len(self.images))
        image = resize_and_crop(self.images[index], self.resolution, self.random_crop, rng)
        flipped = rng.random() < self.flip_probability
        if flipped:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        sample["class_pixel_values"] = to_tensor(image)
        sample["class_prompts"] = self.prompt
        # Deterministic crops are encoded once and cached, as instance images are.
        sample["class_cache_key"] = "" if self.random_crop else f"class/{index}/{int(flipped)}"
