"""What CLIF's augmented data holds and how it is made (DataModule option ``augmentation``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from metrics.settings import DEFAULT_GROUNDING_DINO, DEFAULT_SAM  # Grounded-SAM's, as DINO-FG

SEGMENTERS = ("fallback", "sam")
KINDS = ("g_aug", "r_aug", "m_aug")
# The paper's examples of general concepts (policeman, dog, denim jacket) and a few more.
GENERAL_CONCEPTS = ("policeman", "dog", "denim jacket", "cat", "woman", "red car", "teddy bear")


@dataclass(frozen=True)
class AugmentationSettings:
    """CLIF's G/R/M-Aug data (section 4.1), built once and cached by its options.

    Attributes:
        g_aug: G-Aug images per concept: the segmented concept pasted at a random scale and
            place into an image of a general concept ("a photo of a <v1> dog and a policeman").
        r_aug: R-Aug images per concept: one region of the concept on a plain background
            ("the ear of <v1> dog", or by place, "the upper left part of <v1> dog").
        m_aug: M-Aug images in all, spread evenly over the ordered pairs of concepts: two
            concepts side by side, the prompt naming them left to right. Needs two concepts.
        segmenter: ``fallback`` (weight-free GrabCut) or ``sam`` (SAM prompted by a
            Grounding-DINO box of the class word); a concept with a ``mask_dir`` uses its masks.
        sam_model, grounding_model: the ``sam`` backend's models (hub id, folder, tiny name);
            grounding_model None prompts SAM with the image centre instead.
        general_concepts: what G-Aug pastes the concepts among.
        general_data_dir: a folder with one subfolder per general concept ("denim_jacket/");
            missing images are generated there by the base model before training.
        general_images_per_concept: images of each general concept to use (and generate).
        general_generation_steps: sampling steps per generated general image.
        parts: R-Aug's part names by concept token ({"<v1>": [hat, scarf]}); a concept left
            out uses its class's default list (preparation/segmentation/part_lists.py). Parts
            are looked for with ``sam``; the fallback names regions by place only.
        num_regions: superpixels (fallback) or region candidates per photo for R-Aug.
        resolution: side of the augmented images; None: the DataModule's resolution.
        contrastive_kinds: which kinds stage 1 (the ``clif`` pairs) draws from; the paper
            tunes the text encoder on G- and R-Aug and the decoder on M-Aug.
        train_on_m_aug: the M-Aug images join the training photos (CLIF's stage 2).
        cache_dir: where built sets are kept; None: <cache root>/augmented.
    """

    g_aug: int = 40
    r_aug: int = 40
    m_aug: int = 40
    segmenter: str = "fallback"
    sam_model: str = DEFAULT_SAM
    grounding_model: str | None = DEFAULT_GROUNDING_DINO
    general_concepts: tuple[str, ...] = GENERAL_CONCEPTS
    general_data_dir: str | None = None
    general_images_per_concept: int = 4
    general_generation_steps: int = 25
    parts: dict[str, list[str]] = field(default_factory=dict)
    num_regions: int = 6
    resolution: int | None = None
    contrastive_kinds: tuple[str, ...] = ("g_aug", "r_aug")
    train_on_m_aug: bool = False
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        for name in ("g_aug", "r_aug", "m_aug"):
            if getattr(self, name) < 0:
                raise ValueError(f"augmentation.{name} is a count >= 0, got {getattr(self, name)}.")
        if self.segmenter not in SEGMENTERS:
            raise ValueError(
                f"augmentation.segmenter must be one of {SEGMENTERS}, got {self.segmenter!r} "
                "(a concept's mask_dir gives its masks whatever the segmenter)."
            )
        unknown = [k for k in self.contrastive_kinds if k not in KINDS]
        if unknown or not self.contrastive_kinds:
            raise ValueError(
                f"augmentation.contrastive_kinds takes some of {KINDS}, got "
                f"{list(self.contrastive_kinds)}."
            )
        if self.g_aug and not self.general_concepts:
            raise ValueError("augmentation.g_aug > 0 needs general_concepts to paste among.")
        if self.general_images_per_concept < 1 or self.num_regions < 1:
            raise ValueError(
                "augmentation.general_images_per_concept and num_regions must be >= 1."
            )
        if self.resolution is not None and self.resolution < 16:
            raise ValueError(f"augmentation.resolution must be >= 16, got {self.resolution}.")

    def build_options(self) -> dict[str, Any]:
        """The options that change what is built (the cache key's part); training-only
        switches and where the cache lives are left out."""
        options = asdict(self)
        for unused in ("contrastive_kinds", "train_on_m_aug", "cache_dir"):
            options.pop(unused)
        if self.segmenter != "sam":
            options.pop("sam_model"), options.pop("grounding_model")
        options["general_concepts"] = list(self.general_concepts)
        return options
