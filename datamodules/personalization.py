"""The one DataModule: instance images of one or more concepts, prompts, augmentation.

One file on purpose: the DataModule is the one place a config's data options are read and
checked; the parts it assembles (the samples, prompts, sampler, batch extras, CLIF's augmented
data, the model-made images) each live in their own file.
"""

from __future__ import annotations

import random
from typing import Any

import lightning as L
from PIL import Image

from core.concept import ConceptSpec
from datamodules.augmented_data import AugmentedData
from datamodules.extras import SampleExtra, extra_for, known_keys
from datamodules.extras.class_images import check_class_options, class_prompt_for
from datamodules.generation_prompts import EvalPrompts, GenerationItems, generation_loader
from datamodules.instance_dataset import (
    SYNTHETIC_CLASS_WORD,
    ComposedImage,
    ConceptData,
    InstanceDataset,
)
from datamodules.sampler import ResumableDataLoader, batches_done, resumable_loader
from preparation.augmentation.build import AugmentedSet
from preparation.augmentation.settings import AugmentationSettings
from preparation.augmentation.sources import ConceptPhotos, photo_names
from preparation.model_images import ImageFolderJob, fill_folders
from preparation.photos import check_photo_sizes, load_image_folder
from preparation.synthetic_concept import draw_synthetic_concept
from prompts.multi_concept import named_concepts
from prompts.templates import SIMPLE_TEMPLATES, check_templates

# sample_key: the sample's place in the run's sample stream, which keys its noise (the model's
# step/draws.py), so the draws do not depend on the rank or the local batch.
BASE_BATCH_KEYS = frozenset(
    {"pixel_values", "prompts", "loss_mask", "concept_index", "cache_key", "sample_key"}
)
_SYNTHETIC_MIN_SIDE = 64  # the toy is drawn at least this large, then resized


class PersonalizationDataModule(L.LightningDataModule):
    """Instance photos (or the synthetic toy) of the concepts, with simple prompts."""

    def __init__(
        self,
        instance_data_dir: str | None = None,
        concept_token: str = "<v1>",
        class_word: str | None = None,
        initializer_word: str | None = None,
        additional_concepts: list[ConceptData] | None = None,
        prompt_templates: list[str] | None = None,
        resolution: int = 512,
        random_crop: bool = False,
        flip_probability: float = 0.5,
        rescale_augmentation: bool = False,
        repeats: int = 100,
        batch_size: int = 1,
        num_workers: int = 0,
        synthetic_num_images: int = 5,
        seed: int = 0,
        context_prompts_file: str | None = None,
        context_category: str | None = None,
        captioner: str | None = None,
        class_data_dir: str | None = None,
        class_prompt: str | None = None,
        num_class_images: int = 100,
        class_generation_steps: int = 50,
        eval_prompts: EvalPrompts = EvalPrompts(),  # noqa: B008 (frozen)
        shared_tokens: bool = False,
        mask_dir: str | None = None,
        augmentation: AugmentationSettings | None = None,
    ) -> None:
        """
        Args:
            instance_data_dir: folder of the subject's photos; None draws the synthetic toy.
            concept_token: placeholder token of the (first) concept, e.g. ``<v1>``.
            class_word: the subject's class ("dog"); defaults to "toy" for the synthetic one.
            initializer_word: one-token word the concept vectors start from (class word if None).
            additional_concepts: further concepts, each with its own token and photos.
            prompt_templates: "{}" marks the concept phrase; default: the simple template set.
            resolution: square side the images are resized and cropped to.
            random_crop: random instead of centre crop (disables latent caching).
            flip_probability: chance of a horizontal flip.
            rescale_augmentation: Custom Diffusion's random rescale with its loss mask and
                "a far away" / "zoomed in" prompt words.
            repeats: passes over the images per epoch.
            synthetic_num_images: how many synthetic toy images to draw.
            seed: seeds the shuffle, augmentation and synthetic images.
            context_prompts_file: context-rich prompts for the MLM loss, one per line with "{}"
                for the concept phrase; None uses the generated set (prompts/context.py).
            context_category: ``living`` or ``object`` for the generated set; None decides from
                each class word (see ``category_of``).
            captioner: ACCORD's captions for photos without a captions.txt: a BLIP captioning
                model (hub id, folder, or ``tiny-blip-captioner``), run once per subject and
                cached; None: the prompts stand in (with a warning). Used only when a loss
                asks for captions.
            class_data_dir: prior preservation's class images (missing ones are generated there
                by the base model before training); used only when the model asks for them.
                ``{class_word}`` in it becomes the (first) class word: class_images/{class_word}.
            class_prompt: the class images' prompt; None: "a photo of a <class word>". It must
                name a concept's class word.
            num_class_images: how many class images to use (and to generate if missing).
            class_generation_steps: sampling steps per generated class image (DDIM, cfg 7.5).
            eval_prompts: what ``test`` / ``predict`` generate (DreamBench's prompts by
                default, picked by the class word; see datamodules/generation_prompts).
            shared_tokens: let concepts share a token, as several subjects of one placeholder
                (VisualEncoder learns one image-to-token mapping across subjects); the model
                is given each distinct token once.
            mask_dir: the (first) concept's masks, named like its photos (white = concept),
                for the augmented data; other concepts give theirs in additional_concepts.
            augmentation: CLIF's G/R/M-Aug data (preparation/augmentation/settings.py), built
                once and cached; None builds none (the ``clif`` pairs then cannot be asked for).
        """
        super().__init__()
        if class_word is not None and not class_word.strip():
            raise ValueError("class_word is empty; give the subject's class, e.g. dog.")
        if class_word is None:
            if instance_data_dir is not None:
                raise ValueError(
                    "class_word is required with instance_data_dir (e.g. --data.init_args."
                    "class_word dog): the prompts say '<v1> <class word>'."
                )
            class_word = SYNTHETIC_CLASS_WORD
        first = ConceptData(
            concept_token, class_word, instance_data_dir, initializer_word, mask_dir
        )
        self.concept_data = [first, *(additional_concepts or [])]
        for extra in additional_concepts or []:
            if extra.instance_data_dir is not None and extra.class_word == SYNTHETIC_CLASS_WORD:
                raise ValueError(
                    f"Concept {extra.token!r} has photos ({extra.instance_data_dir}) but no "
                    "class_word; give it one, e.g. {token: '<v2>', class_word: dog, ...}."
                )
        tokens = [c.token for c in self.concept_data]
        if len(set(tokens)) != len(tokens) and not shared_tokens:
            raise ValueError(
                f"Concept tokens must differ from each other, got {tokens} (set shared_tokens: "
                "true for several subjects of one token)."
            )
        self.templates = check_templates(prompt_templates or SIMPLE_TEMPLATES)
        for option, value, least, what in (
            ("resolution", resolution, 8, "the side in pixels, e.g. 512"),
            ("batch_size", batch_size, 1, "photos per step, e.g. 1"),
            ("repeats", repeats, 1, "passes over the photos per epoch, e.g. 100"),
        ):
            if value < least:
                raise ValueError(
                    f"data.init_args.{option} is {value}; it must be >= {least} ({what})."
                )
        if not 0.0 <= flip_probability <= 1.0:
            raise ValueError(f"flip_probability is a chance in [0, 1], got {flip_probability}.")
        self.resolution, self.random_crop = resolution, random_crop
        self.flip_probability, self.rescale_augmentation = flip_probability, rescale_augmentation
        self.repeats, self.batch_size, self.num_workers = repeats, batch_size, num_workers
        self.synthetic_num_images, self.seed = synthetic_num_images, seed
        self.extras: list[SampleExtra] = []  # built on request(); see datamodules/extras
        # Context-rich prompts (the MLM loss): a file with one "{}" prompt per line, or the
        # generated set of a category (None: living / object from each class word).
        self.context_prompts_file, self.context_category = context_prompts_file, context_category
        self.captioner = captioner  # ACCORD's captions of uncaptioned photos (extras/captions.py)
        class_words = [c.class_word for c in self.concept_data]
        class_prompt = class_prompt_for(class_words, class_prompt)
        if class_data_dir is not None:  # a folder per class word, unless it names one itself
            class_data_dir = class_data_dir.replace("{class_word}", class_word.replace(" ", "_"))
        check_class_options(class_data_dir, class_prompt, num_class_images, class_generation_steps)
        self.class_data_dir, self.class_prompt = class_data_dir, class_prompt
        self.num_class_images = num_class_images
        self.class_generation_steps = class_generation_steps
        # Read every image now: a bad folder fails before any model is loaded.
        self.images = [self._load_images(c, i) for i, c in enumerate(self.concept_data)]
        for concept, images in zip(self.concept_data, self.images):
            check_photo_sizes(images, concept.instance_data_dir, self.resolution)
        # The test/predict prompts; a bad prompt file fails here, before any model is built.
        self.eval_prompts = eval_prompts
        self.eval_prompt_set, self.eval_templates = self.eval_prompts.templates(
            class_word, len(self.concepts)
        )
        self.augmentation = augmentation
        self._composed_images: list[ComposedImage] | None = None  # M-Aug, read on first use
        self.augmented = (
            None
            if augmentation is None
            else AugmentedData(augmentation, self._concept_photos(), self.resolution, self.seed)
        )

    @property
    def concepts(self) -> list[ConceptSpec]:
        """What the model needs to know of the concepts (linked to model.init_args.concepts)."""
        first_of_token = {c.token: c.spec for c in reversed(self.concept_data)}
        return [first_of_token[t] for t in dict.fromkeys(c.token for c in self.concept_data)]

    def _load_images(self, concept: ConceptData, index: int) -> list[Image.Image]:
        if concept.instance_data_dir is not None:
            return load_image_folder(concept.instance_data_dir)
        side = max(self.resolution, _SYNTHETIC_MIN_SIDE)
        return draw_synthetic_concept(self.synthetic_num_images, side, self.seed + index)

    def _concept_photos(self) -> list[ConceptPhotos]:
        return [
            ConceptPhotos(c.spec, images, photo_names(c.instance_data_dir, len(images)), c.mask_dir)
            for c, images in zip(self.concept_data, self.images)
        ]

    def images_to_generate(self) -> list[tuple[str, str, int, int]]:
        """(folder, prompt, count, side) of images the base model must make before training
        (G-Aug's general concepts); ``setup`` generates them."""
        return self.augmented.to_generate() if self.augmented is not None else []

    def model_image_jobs(self, stage: str, class_images: bool) -> list[ImageFolderJob]:
        """The folders the base model fills before ``stage``: the class images when the model
        trains with them, and (training only) CLIF's general concepts."""
        jobs = []
        if class_images and self.class_data_dir is not None:
            jobs.append(ImageFolderJob(self.class_data_dir, self.class_prompt,
                                       self.num_class_images, self.resolution,
                                       self.class_generation_steps))  # fmt: skip
        if stage == "fit":
            steps = self.augmentation.general_generation_steps if self.augmentation else 0
            jobs += [ImageFolderJob(folder, prompt, count, side, steps)
                     for folder, prompt, count, side in self.images_to_generate()]  # fmt: skip
        return jobs

    def setup(self, stage: str) -> None:
        """Data preparation's entry point for what needs the model: the images the base model
        makes before training, through the pipeline the model hands over (``image_pipeline``),
        on every rank (each makes its share). Runs before the model's setup requests its
        batch data, so the class folder is full when the class-image extra reads it."""
        model = self.trainer.lightning_module if self.trainer is not None else None
        if model is None or not hasattr(model, "image_pipeline"):
            return  # no model that makes images (the contextualizer's pretraining, a test)
        wanted = set().union(*model.data_requirements(stage).values())
        jobs = self.model_image_jobs(stage, class_images="class_pixel_values" in wanted)
        if jobs:
            fill_folders(model.image_pipeline(), jobs)

    def prepare_data(self) -> None:
        """Build (or find cached) the augmented data, unless images must be generated first."""
        if self.augmented is not None and self.augmented.ready():
            self.augmented.get()

    def augmented_set(self) -> AugmentedSet:
        """CLIF's augmented pairs; a ValueError naming the option when none were asked for."""
        if self.augmented is None:
            raise ValueError(
                "no augmented data was configured: set data.init_args.augmentation (e.g. "
                "{g_aug: 40, r_aug: 40, m_aug: 40, general_data_dir: general_images})."
            )
        trainer = self.trainer
        if trainer is None:
            return self.augmented.get()
        return self.augmented.get(
            trainer.global_rank, lambda: trainer.strategy.barrier("augmented_data")
        )

    def provided_batch_keys(self) -> set[str]:
        """Batch keys built now: the base ones plus those of the extras requested so far."""
        return set(BASE_BATCH_KEYS).union(*(extra.provides for extra in self.extras))

    def request(self, keys: set[str] | frozenset[str], who: str) -> None:
        """Build the extras that provide `keys` (the module calls this from its setup).

        Raises a ValueError naming `who` needs what, and how to get it, when no extra provides
        a key or the extra lacks a DataModule option.
        """
        for key in sorted(set(keys) - self.provided_batch_keys()):
            extra_class = extra_for(key)
            if extra_class is None:
                raise ValueError(
                    f"{who} needs batch data {key!r}, which {type(self).__name__} cannot build "
                    f"(it builds {sorted(BASE_BATCH_KEYS | known_keys())})."
                )
            try:
                self.extras.append(extra_class.from_datamodule(self))
            except ValueError as error:
                raise ValueError(f"{who} needs batch data {key!r}: {error}") from error

    def possible_values(self, key: str) -> list[str] | None:
        """Every value training batch key ``key`` can take, when that set is finite and known:
        the prompts and the keys of enumerable extras (derived from prompt and photo alone);
        None otherwise (e.g. context-rich prompts, drawn from a large corpus). Losses encode
        their constant texts from it once before training instead of as they first appear."""
        dataset = self._dataset(augment=True, repeats=1)
        if key == "prompts":
            return list(
                dict.fromkeys(
                    p for c in range(len(self.images)) for p in dataset.possible_prompts(c)
                )
            )
        extra = next((e for e in self.extras if key in e.provides), None)
        if extra is None or not extra.enumerable:
            return None
        values: dict[str, None] = {}
        for concept_index, images in enumerate(self.images):
            for prompt in dataset.possible_prompts(concept_index):
                for image_index in range(len(images)):
                    sample = {"prompts": prompt, "image_index": image_index}
                    extra.add(sample, concept_index, random.Random(0))
                    values[sample[key]] = None
        return list(values)

    def prompt_pools(self, key: str) -> list[list[str]] | None:
        """Each concept's pool of values for batch key ``key`` when an extra draws it from one
        (``context_prompts``), else None: a loss that draws its own batch of them per step
        (MLM's caption batch) reads it once before training."""
        extra = next((e for e in self.extras if key in e.provides), None)
        pools = getattr(extra, "pools_as_texts", None)
        return None if pools is None else pools()

    def _composed(self, training: bool) -> list[ComposedImage]:
        """M-Aug images joining the training photos (augmentation.train_on_m_aug)."""
        settings = self.augmentation
        if not training or settings is None or not settings.train_on_m_aug:
            return []
        if self._composed_images is None:  # read once: every dataset made shares them
            built = self.augmented_set()
            self._composed_images = [
                ComposedImage(built.image(item), item.prompt, item.concepts[0])
                for item in built.of_kind("m_aug")
            ]
        return self._composed_images

    def _dataset(self, augment: bool, repeats: int) -> InstanceDataset:
        return InstanceDataset(
            self.images,
            self.concept_data,
            self.templates if augment else self.templates[:1],
            self.resolution,
            random_crop=self.random_crop and augment,
            flip_probability=self.flip_probability if augment else 0.0,
            rescale_augmentation=self.rescale_augmentation and augment,
            repeats=repeats,
            seed=self.seed,
            extras=self.extras,
            composed=self._composed(augment),
        )

    def _loader(self, dataset: InstanceDataset, training: bool) -> ResumableDataLoader:
        return resumable_loader(
            dataset,
            self.trainer,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            seed=self.seed,
            shuffle=training,
            skip_batches=batches_done(self.trainer) if training else 0,
            offset_by_epoch=training,
        )

    def train_dataloader(self) -> ResumableDataLoader:
        return self._loader(self._dataset(augment=True, repeats=self.repeats), training=True)

    def val_dataloader(self) -> ResumableDataLoader:
        return self._loader(self._dataset(augment=False, repeats=1), training=False)

    def test_dataloader(self) -> Any:
        """The evaluation prompts x images, fixed seeds (see eval_prompts): the first concept's,
        or the concepts a multi-concept set names ("{0}", "{1}", ... index ``concepts``)."""
        items = GenerationItems(self.eval_templates, self.concepts, self.eval_prompts)
        world = (self.trainer.world_size, self.trainer.global_rank) if self.trainer else (1, 0)
        return generation_loader(items, self.eval_prompts.batch_size, *world)

    def predict_dataloader(self) -> Any:
        return self.test_dataloader()

    def reference_images(self, concept_index: int = 0) -> list[Image.Image]:
        """A concept's instance images: what CLIP-I / DINO-I compare the generations with."""
        return self.images[concept_index]

    @property
    def eval_concepts(self) -> list[int] | None:
        """The concepts a multi-concept evaluation set names, each scored against its own
        reference_images; None for a single-concept set (the first concept's references)."""
        return named_concepts(self.eval_templates)
