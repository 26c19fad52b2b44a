"""Captions split into ACCORD's conditions: full (cp, cg), concept phrase cp, general part cg.

ACCORD conditions on real captions ("a <v1> backpack on a girl's back in a park"), not
templates: they name the other concepts (cg) the target appears with, which DDLoss and PDLoss
decouple from it. A subject folder may hold a captions file beside the photos:

    captions.txt      one line per photo, "<file name>: <caption>", where "{}" stands for the
                      concept phrase ("<v1> backpack"); blank lines and "#" comments are skipped.
    00.jpg: a {} on the back of a girl walking in a park
    01.jpg: a {} lying on a wooden bench

Without one, the DataModule's ``captions.captioner`` (BLIP) captions the photos once, as the
paper does with a VLM (preparation/captioning.py, cached); with no captioner either, the
sample's own prompt is the caption ("a photo of a <v1> toy"), the template fallback, with a
warning: the general part is then the near-empty "a photo of a", which DDLoss and PDLoss
average over. The keys, all strings: ``caption_full``, ``caption_concept``
("<v1> dog"), ``caption_general`` (the caption without the concept phrase) and
``caption_superclass`` (the class word, cs: the concept's superclass, for PDLoss).
"""

from __future__ import annotations

import random
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from core.concept import ConceptSpec
from core.errors import read_utf8_text
from core.options import clear_null_strings
from datamodules.extras.base import SampleExtra
from preparation.captioning import caption_photos
from preparation.photos import list_image_files

if TYPE_CHECKING:
    from datamodules.personalization import PersonalizationDataModule

CAPTIONS_FILE = "captions.txt"
PLACEHOLDER = "{}"


@dataclass(frozen=True)
class CaptionOptions:
    """How photos without a captions file get captions (DataModule option ``captions``).

    Attributes:
        captioner: a BLIP captioning model (hub id, folder, or ``tiny-blip-captioner``), run
            once per subject and cached; None: the prompts stand in (with a warning). Used
            only when a loss asks for captions.
    """

    captioner: str | None = None

    def __post_init__(self) -> None:
        clear_null_strings(self, "captioner")


@dataclass(frozen=True)
class CaptionParts:
    """One caption's conditions; all plain strings, so they collate as lists."""

    full: str
    concept: str
    general: str
    superclass: str


def split_caption(
    caption: str, concept: ConceptSpec, placeholder: str = PLACEHOLDER
) -> CaptionParts:
    """Split a caption at the (first) ``placeholder`` into its full, concept and general parts."""
    before, found, after = caption.partition(placeholder)
    if not found:
        raise ValueError(f"Caption {caption!r} does not contain {placeholder!r}.")
    return CaptionParts(
        full=" ".join(f"{before}{concept.phrase}{after}".split()),
        concept=concept.phrase,
        general=" ".join(f"{before} {after}".split()),
        superclass=concept.class_word,
    )


def read_captions(folder: Path) -> list[str] | None:
    """Captions of a folder's photos in the photos' (sorted) order; None when it has no file.

    Every photo needs exactly one caption holding "{}" once; errors name the file and the fix.
    """
    path = Path(folder) / CAPTIONS_FILE
    if not path.exists():
        return None
    by_name: dict[str, str] = {}
    for number, raw in enumerate(read_utf8_text(path).splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, colon, caption = line.partition(":")
        name, caption = name.strip(), caption.strip()
        where = f"{path}:{number}"
        if not colon or not name or not caption:
            raise ValueError(
                f"{where}: expected '<image file name>: <caption with {{}}>', got {raw!r}."
            )
        if caption.count(PLACEHOLDER) != 1:
            raise ValueError(
                f"{where}: caption {caption!r} must contain the concept placeholder '{{}}' "
                "exactly once, where the concept phrase goes, e.g. 'a {} on a wooden bench'."
            )
        if name in by_name:
            raise ValueError(f"{where}: image {name!r} has a second caption; keep one.")
        by_name[name] = caption
    names = [file.name for file in list_image_files(folder)]
    missing = [n for n in names if n not in by_name]
    unknown = sorted(set(by_name) - set(names))
    if missing or unknown:
        raise ValueError(
            f"{path} must caption each photo of its folder once: no caption for {missing}, "
            f"captions for files that are not photos there: {unknown}. Add or fix those lines "
            f"('<file name>: <caption with {{}}>'), or delete {CAPTIONS_FILE} to use the prompts."
        )
    return [by_name[n] for n in names]


class Captions(SampleExtra):
    """Adds the caption parts of each sample's photo (or of its prompt, the fallback)."""

    provides: ClassVar[frozenset[str]] = frozenset(
        {"caption_full", "caption_concept", "caption_general", "caption_superclass"}
    )
    enumerable: ClassVar[bool] = True  # strings of the prompt, photo and concept only

    def __init__(self, concepts: list[ConceptSpec], captions: list[list[str] | None]) -> None:
        """``captions[c][i]``: the caption template of photo i of concept c (None: fallback)."""
        self.concepts = list(concepts)
        self.captions = list(captions)

    @classmethod
    def from_datamodule(cls, datamodule: PersonalizationDataModule) -> SampleExtra:
        """Reads (and checks) each concept's captions file now, before training; captions the
        photos that have none when the DataModule names a captioner."""
        captioner = datamodule.captions.captioner
        captions: list[list[str] | None] = []
        # One entry per concept_data row (samples index it), also when subjects share a token.
        for index, data in enumerate(datamodule.concept_data):
            folder = Path(data.instance_data_dir) if data.instance_data_dir else None
            own = read_captions(folder) if folder is not None else None
            if own is None and captioner:
                images = datamodule.images[index]
                names = (
                    [file.name for file in list_image_files(folder)]
                    if folder is not None
                    else [f"synthetic-{i:02d}" for i in range(len(images))]
                )
                own = caption_photos(images, names, data.spec.class_word, captioner)
            elif own is None:
                warnings.warn(
                    f"No {CAPTIONS_FILE} beside the photos of {data.spec.token} and no "
                    "captioner: the prompts stand in for ACCORD's captions, so DDLoss and "
                    "PDLoss decouple the concept from the template's near-empty rest ('a photo "
                    "of a') only. Set data.init_args.captions.captioner (e.g. Salesforce/"
                    f"blip-image-captioning-large) or write {CAPTIONS_FILE}.",
                    stacklevel=2,
                )
            captions.append(own)
        return cls([c.spec for c in datamodule.concept_data], captions)

    def parts(self, sample: dict[str, Any], concept_index: int) -> CaptionParts:
        concept = self.concepts[concept_index]
        captions = self.captions[concept_index]
        if captions is not None:
            return split_caption(captions[sample["image_index"]], concept)
        prompt = sample["prompts"]
        if concept.phrase not in prompt:
            raise ValueError(
                f"Prompt {prompt!r} lacks the concept phrase {concept.phrase!r}, so it cannot "
                f"stand in for a caption; add {CAPTIONS_FILE} beside the photos."
            )
        # The prompt itself, unchanged, so DDLoss can see it is the denoising pass's condition.
        return replace(split_caption(prompt, concept, placeholder=concept.phrase), full=prompt)

    def add(self, sample: dict[str, Any], concept_index: int, rng: random.Random) -> None:
        parts = self.parts(sample, concept_index)
        sample["caption_full"] = parts.full
        sample["caption_concept"] = parts.concept
        sample["caption_general"] = parts.general
        sample["caption_superclass"] = parts.superclass
