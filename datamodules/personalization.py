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

from core.concept import STYLE_CLASS_WORD, ConceptSpec
from datamodules.augmented_data import AugmentedData
from datamodules.buckets import (
    BucketSettings,
    bucket_sizes,
    check_buckets_fill,
    nearest_bucket,
)
from datamodules.extras import SampleExtra, extra_for, known_keys
from datamodules.extras.captions import CaptionOptions
from datamodules.extras.class_images import ClassImageOptions
from datamodules.extras.context_prompts import ContextPromptOptions
from datamodules.generation_prompts import EvalPrompts, GenerationItems, generation_loader
from datamodules.instance_dataset import (
    SYNTHETIC_CLASS_WORD,
    ComposedImage,
    ConceptData,
    InstanceDataset,
    split_photos,
)
from datamodules.sampler import ResumableDataLoader, batches_done, resumable_loader
from preparation.augmentation.build import AugmentedSet
from preparation.augmentation.settings import AugmentationSettings
from preparation.augmentation.sources import ConceptPhotos, photo_names
from preparation.model_images import ImageFolderJob, fill_folders
from preparation.photos import check_photo_sizes, load_image_folder
from preparation.synthetic_concept import draw_synthetic_concept
from preparation.synthetic_style import draw_synthetic_style
from prompts.multi_concept import named_concepts
from prompts.style import STYLE_TEMPLATES
from prompts.templates import SIMPLE_TEMPLATES, check_templates

# sample_key: the sample's place in the run's sample stream, which keys its noise (the model's
# step/draws.py), so the draws do not depend on the rank or the local batch.
BASE_BATCH_KEYS = frozenset(
    {"pixel_values", "prompts", "loss_mask", "concept_index", "cache_key", "sample_key"}
)
# Batch data that assumes a subject in the image, and what it is, for a style's refusal.
SUBJECT_ONLY_KEYS = {
    "class_pixel_values": "prior preservation's class images (of the class word)",
    "subject_mask": "the subject mask (background_loss_weight)",
}
_SYNTHETIC_MIN_SIDE = 64  # the toy is drawn at least this large, then resized


class PersonalizationDataModule(L.LightningDataModule):
    """Instance photos (or the synthetic toy) of the concepts, with simple prompts."""

    def __init__(
        self,
        instance_data_dir: str | None = None,
        concept_token: str = "<v1>",
        class_word: str | None = None,
        initializer_word: str | None = None,
        concept_kind: str | None = None,
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
        class_images: ClassImageOptions = ClassImageOptions(),  # noqa: B008 (frozen)
        context_prompts: ContextPromptOptions = ContextPromptOptions(),  # noqa: B008 (frozen)
        captions: CaptionOptions = CaptionOptions(),  # noqa: B008 (frozen)
        eval_prompts: EvalPrompts = EvalPrompts(),  # noqa: B008 (frozen)
        shared_tokens: bool = False,
        mask_dir: str | None = None,
        augmentation: AugmentationSettings | None = None,
        validation_split: int = 0,
        buckets: BucketSettings | None = None,
    ) -> None:
        """
        Args:
            instance_data_dir: folder of the subject's photos; None draws the synthetic toy.
            concept_token: placeholder token of the (first) concept, e.g. ``<v1>``.
            class_word: the subject's class ("dog"); defaults to "toy" for the synthetic one.
            initializer_word: one-token word the concept vectors start from (class word if None).
            concept_kind: ``object``, ``living`` or ``style`` (None: a subject, object or
                living as the class word says). A style trains from images in the style with
                style prompts ("a painting in the style of <v1> style"); its class word, the
                superclass SPL / PDLoss / DDLoss contrast with, defaults to ``style``; without
                images it gets a synthetic style; the losses that assume a subject in the
                image (prior preservation, CLIF's augmentation, the subject mask) refuse it.
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
            class_images: prior preservation's class images (folder, prompt, count,
                generation steps; datamodules/extras/class_images.py); missing ones are
                generated by the base model before training, only when the model asks for them.
            context_prompts: where the MLM loss's context-rich prompts come from (a file, or the
                generated set of a category; datamodules/extras/context_prompts.py).
            captions: ACCORD's captions of photos without a captions.txt (the BLIP captioner;
                datamodules/extras/captions.py).
            eval_prompts: what ``test`` / ``predict`` generate (DreamBench's prompts by
                default, picked by the class word; see datamodules/generation_prompts).
            shared_tokens: let concepts share a token, as several subjects of one placeholder
                (VisualEncoder learns one image-to-token mapping across subjects); the model
                is given each distinct token once.
            mask_dir: the (first) concept's masks, named like its photos (white = concept),
                for the augmented data; other concepts give theirs in additional_concepts.
            augmentation: CLIF's G/R/M-Aug data (preparation/augmentation/settings.py), built
                once and cached; None builds none (the ``clif`` pairs then cannot be asked for).
            validation_split: photos per concept held out of training (the last ones by file
                name): the validation loss is measured on them. 0: none held out, and the
                validation loss is measured on the training photos.
            buckets: aspect-ratio buckets (datamodules/buckets.py): each photo trains at the
                size of about resolution² pixels nearest its aspect ratio, batches within one
                bucket; None: square crops.
        """
        super().__init__()
        if class_word is not None and not class_word.strip():
            raise ValueError("class_word is empty; give the subject's class, e.g. dog.")
        style = concept_kind == "style"
        if class_word is None and style:
            class_word = STYLE_CLASS_WORD
        if class_word is None:
            if instance_data_dir is not None:
                raise ValueError(
                    "class_word is required with instance_data_dir (e.g. --data.init_args."
                    "class_word dog): the prompts say '<v1> <class word>'."
                )
            class_word = SYNTHETIC_CLASS_WORD
        first = ConceptData(
            concept_token, class_word, instance_data_dir, initializer_word, mask_dir, concept_kind
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
        default_templates = STYLE_TEMPLATES if style else SIMPLE_TEMPLATES
        self.templates = check_templates(prompt_templates or default_templates)
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
        # Each batch extra's options, checked now; the extra reads them when a loss asks for it.
        self.context_prompts, self.captions = context_prompts, captions
        self.class_images = class_images.for_classes([c.class_word for c in self.concept_data])
        # Read every image now: a bad folder fails before any model is loaded.
        self.images = [self._load_images(c, i) for i, c in enumerate(self.concept_data)]
        for concept, images in zip(self.concept_data, self.images):
            check_photo_sizes(images, concept.instance_data_dir, self.resolution)
        self.training_photos, self.held_out_photos = split_photos(self.images, validation_split)
        self.buckets, self.photo_sizes = buckets, self._bucket_sizes(buckets, augmentation)
        # The test/predict prompts; a bad prompt file fails here, before any model is built.
        self.eval_prompts = eval_prompts
        self.eval_prompt_set, self.eval_templates = self.eval_prompts.templates(
            class_word, len(self.concepts), style
        )
        styles = [c.token for c in self.concept_data if c.spec.is_style]
        if augmentation is not None and styles:
            raise ValueError(
                f"data.init_args.augmentation (CLIF's segmented G/R/M-Aug data) needs a subject "
                f"to segment; {styles} are styles. Drop the augmentation for a style."
            )
        self.augmentation = augmentation
        self._composed_images: list[ComposedImage] | None = None  # M-Aug, read on first use
        self.augmented = (
            None
            if augmentation is None
            else AugmentedData(augmentation, self._concept_photos(), self.resolution, self.seed)
        )

    def _bucket_sizes(
        self, buckets: BucketSettings | None, augmentation: AugmentationSettings | None
    ) -> dict[tuple[int, int], tuple[int, int]]:
        """Each photo's (width, height) bucket by (concept, photo); {} without buckets."""
        if buckets is None:
            return {}
        if self.rescale_augmentation:
            raise ValueError(
                "data.init_args.buckets and rescale_augmentation do not go together (the "
                "rescale pastes onto a square canvas); turn one of them off."
            )
        if augmentation is not None and augmentation.train_on_m_aug:
            raise ValueError(
                "data.init_args.buckets and augmentation.train_on_m_aug do not go together "
                "(M-Aug's composed images are square); set train_on_m_aug: false."
            )
        sizes = bucket_sizes(self.resolution, buckets)
        return {
            (c, i): sizes[nearest_bucket(photo.size, sizes)]
            for c, photos in enumerate(self.images)
            for i, photo in enumerate(photos)
        }

    @property
    def concepts(self) -> list[ConceptSpec]:
        """What the model needs to know of the concepts (linked to model.init_args.concepts)."""
        first_of_token = {c.token: c.spec for c in reversed(self.concept_data)}
        return [first_of_token[t] for t in dict.fromkeys(c.token for c in self.concept_data)]

    def _load_images(self, concept: ConceptData, index: int) -> list[Image.Image]:
        if concept.instance_data_dir is not None:
            return load_image_folder(concept.instance_data_dir)
        side = max(self.resolution, _SYNTHETIC_MIN_SIDE)
        if concept.spec.is_style:  # concept i gets synthetic style i
            return draw_synthetic_style(self.synthetic_num_images, side, self.seed, index)
        return draw_synthetic_concept(self.synthetic_num_images, side, self.seed + index)

    def check_keys_fit_concepts(self, keys: set[str] | frozenset[str], who: str) -> None:
        """A style has no subject in its images: what needs one is refused, naming who."""
        styles = [c.token for c in self.concept_data if c.spec.is_style]
        refused = sorted(set(keys) & set(SUBJECT_ONLY_KEYS))
        if styles and refused:
            raise ValueError(
                f"{who} needs {SUBJECT_ONLY_KEYS[refused[0]]}, but {styles} are styles, "
                f"whose images hold no subject; turn it off for a style run."
            )

    def _concept_photos(self, held_out_too: bool = False) -> list[ConceptPhotos]:
        """Each concept's photos (the training ones; all with ``held_out_too``)."""
        chosen = [range(len(i)) for i in self.images] if held_out_too else self.training_photos
        concepts = []
        for concept, images, indices in zip(self.concept_data, self.images, chosen):
            names = photo_names(concept.instance_data_dir, len(images))
            photos, names = [images[i] for i in indices], [names[i] for i in indices]
            concepts.append(ConceptPhotos(concept.spec, photos, names, concept.mask_dir))
        return concepts

    def images_to_generate(self) -> list[tuple[str, str, int, int]]:
        """(folder, prompt, count, side) of images the base model must make before training
        (G-Aug's general concepts); ``setup`` generates them."""
        return self.augmented.to_generate() if self.augmented is not None else []

    def model_image_jobs(self, stage: str, with_class_images: bool) -> list[ImageFolderJob]:
        """The folders the base model fills before ``stage``: the class images when the model
        trains with them, and (training only) CLIF's general concepts."""
        jobs = []
        options = self.class_images
        if with_class_images and options.folder is not None:
            jobs.append(ImageFolderJob(options.folder, str(options.prompt), options.count,
                                       self.resolution, options.generation_steps))  # fmt: skip
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
        for who, keys in model.data_requirements(stage).items():
            self.check_keys_fit_concepts(keys, who)
        wanted = set().union(*model.data_requirements(stage).values())
        jobs = self.model_image_jobs(stage, "class_pixel_values" in wanted)
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
        self.check_keys_fit_concepts(keys, who)
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

    def _dataset(
        self, augment: bool, repeats: int, photos: list[list[int]] | None = None
    ) -> InstanceDataset:
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
            photos=self.training_photos if photos is None else photos,
            sizes=self.photo_sizes,
        )

    def _loader(self, dataset: InstanceDataset, training: bool) -> ResumableDataLoader:
        bucket_of = None
        if self.buckets is not None and training:  # batches of one bucket each
            sizes = [dataset.crop_size(*dataset.items[i % len(dataset.items)])
                     for i in range(len(dataset))]  # fmt: skip
            known = sorted(set(sizes))
            bucket_of = [known.index(size) for size in sizes]
            world = self.trainer.world_size if self.trainer is not None else 1
            check_buckets_fill(bucket_of, self.batch_size * world, known)
        return resumable_loader(
            dataset,
            self.trainer,
            # validation with buckets: one image a batch (its photos' sizes differ)
            batch_size=self.batch_size if training or self.buckets is None else 1,
            bucket_of=bucket_of,
            num_workers=self.num_workers,
            seed=self.seed,
            shuffle=training,
            skip_batches=batches_done(self.trainer) if training else 0,
            offset_by_epoch=training,
        )

    def train_dataloader(self) -> ResumableDataLoader:
        return self._loader(self._dataset(augment=True, repeats=self.repeats), training=True)

    def val_dataloader(self) -> ResumableDataLoader:
        """The held-out photos (``validation_split``), else the training ones, unaugmented."""
        held_out = self.held_out_photos if any(self.held_out_photos) else None
        dataset = self._dataset(augment=False, repeats=1, photos=held_out)
        return self._loader(dataset, training=False)

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
