"""Build CLIF's G/R/M-Aug set once, write it with a manifest, and reuse it by its key.

The key hashes everything the images depend on: the build options, the concepts, the photos'
pixels, the mask files, the general images and the seed. The same inputs load the cached set;
any change builds a new one (in a staging folder swapped in whole, so a killed build leaves no
half set). Every image draws from its own seeded stream, so a set is the same on every machine.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm.auto import tqdm

from core.atomic import swap_in
from core.cache import cache_root
from preparation.augmentation.g_aug import paste_among
from preparation.augmentation.m_aug import side_by_side
from preparation.augmentation.r_aug import region_image
from preparation.augmentation.settings import AugmentationSettings
from preparation.augmentation.sources import (
    ConceptPhotos,
    SegmentedPhoto,
    build_backends,
    regions_of,
    segment_concept,
)
from preparation.photos import list_image_files
from preparation.segmentation.part_lists import parts_for

BUILD_VERSION = 1  # bump when what a build makes changes, so older sets are not reused
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class AugmentedItem:
    """One image-text pair: its kind, file (relative to the set), prompt and the indices of
    the concepts it names, in the prompt's order."""

    kind: str
    file: str
    prompt: str
    concepts: tuple[int, ...]


@dataclass(frozen=True)
class AugmentedSet:
    folder: Path
    items: list[AugmentedItem]
    build_seconds: float
    reused: bool

    def of_kind(self, *kinds: str) -> list[AugmentedItem]:
        return [item for item in self.items if item.kind in kinds]

    def image(self, item: AugmentedItem) -> Image.Image:
        with Image.open(self.folder / item.file) as image:
            return image.convert("RGB")


def _hash_image(digest: Any, image: Image.Image) -> None:
    rgb = image.convert("RGB")
    digest.update(f"{rgb.size}".encode())
    digest.update(rgb.tobytes())


def set_key(
    concepts: list[ConceptPhotos],
    general: dict[str, list[Image.Image]],
    settings: AugmentationSettings,
    size: int,
    seed: int,
) -> str:
    digest = hashlib.sha256()
    options = {"version": BUILD_VERSION, "size": size, "seed": seed, **settings.build_options()}
    options["method"] = method_constants()
    digest.update(json.dumps(options, sort_keys=True, default=str).encode())
    for concept in concepts:
        parts = parts_for(concept.spec.class_word, settings.parts.get(concept.spec.token))
        digest.update(json.dumps([concept.spec.token, concept.spec.class_word, parts]).encode())
        for photo in concept.photos:
            _hash_image(digest, photo)
        if concept.mask_dir:
            for file in list_image_files(concept.mask_dir):
                digest.update(file.name.encode() + file.read_bytes())
    for name in sorted(general):
        digest.update(name.encode())
        for image in general[name]:
            _hash_image(digest, image)
    return digest.hexdigest()[:20]


def method_constants() -> dict[str, Any]:
    """The constants that shape what a build makes, so changing one rebuilds the sets (with
    BUILD_VERSION for changes in the code itself)."""
    from preparation.augmentation import g_aug, m_aug, r_aug, sources
    from preparation.segmentation import fallback, regions

    return {
        "fallback": [fallback.WORK_SIZE, fallback.BORDER_COLOURS, fallback.ITERATIONS,
                     fallback.CENTRE_PRIOR],
        "regions": [regions.MIN_SHARE, regions.MAX_SHARE, sources.MIN_SEGMENTED],
        "scales": [g_aug.SCALE_RANGE, r_aug.SCALE_RANGE, m_aug.SCALE_RANGE, m_aug.BACKGROUNDS],
    }  # fmt: skip


def planned_counts(settings: AugmentationSettings, num_concepts: int) -> dict[str, int]:
    """How many images of each kind a build makes."""
    return {
        "g_aug": settings.g_aug * num_concepts,
        "r_aug": settings.r_aug * num_concepts,
        "m_aug": settings.m_aug if num_concepts > 1 else 0,
    }


def check_buildable(settings: AugmentationSettings, num_concepts: int) -> None:
    if settings.m_aug and num_concepts < 2:
        raise ValueError(
            f"augmentation.m_aug is {settings.m_aug} but the run has one concept; M-Aug puts "
            "two concepts side by side: add data.init_args.additional_concepts, or set "
            "augmentation.m_aug: 0."
        )


def _generate(
    concepts: list[ConceptPhotos],
    general: dict[str, list[Image.Image]],
    settings: AugmentationSettings,
    size: int,
    seed: int,
) -> Iterator[tuple[AugmentedItem, Image.Image]]:
    """Every (item, image) of the set, in a fixed order."""
    segmenter, finder = build_backends(settings, any(not c.mask_dir for c in concepts))
    segmented = [segment_concept(c, size, segmenter) for c in concepts]
    for c, (concept, photos) in enumerate(zip(concepts, segmented)):
        phrase = concept.spec.phrase
        names = sorted(general)
        for i in range(settings.g_aug):
            rng = random.Random(f"{seed}/g_aug/{c}/{i}")
            photo: SegmentedPhoto = rng.choice(photos)
            name = rng.choice(names)
            sample = paste_among(photo.cutout(phrase), rng.choice(general[name]), name, size, rng)
            yield (
                AugmentedItem("g_aug", f"g_aug/{c}_{i:04d}.png", sample.prompt, (c,)),
                sample.image,
            )
        if settings.r_aug:
            parts = parts_for(concept.spec.class_word, settings.parts.get(concept.spec.token))
            regions = [(p, r) for p in photos
                       for r in regions_of(p, parts, settings.num_regions, finder)]  # fmt: skip
            if not regions:
                raise ValueError(f"no region of {concept.spec.token!r} was found for R-Aug.")
        for i in range(settings.r_aug):
            rng = random.Random(f"{seed}/r_aug/{c}/{i}")
            photo, region = rng.choice(regions)
            image, _ = region_image(photo.photo, region.mask, size, rng)
            yield (
                AugmentedItem("r_aug", f"r_aug/{c}_{i:04d}.png", region.prompt(phrase), (c,)),
                image,
            )
    pairs = [(a, b) for a in range(len(concepts)) for b in range(len(concepts)) if a != b]
    for i in range(settings.m_aug if pairs else 0):
        rng = random.Random(f"{seed}/m_aug/{i}")
        a, b = pairs[i % len(pairs)]
        left = rng.choice(segmented[a]).cutout(concepts[a].spec.phrase)
        right = rng.choice(segmented[b]).cutout(concepts[b].spec.phrase)
        sample = side_by_side(left, right, size, rng)
        yield AugmentedItem("m_aug", f"m_aug/{i:04d}.png", sample.prompt, (a, b)), sample.image


def _load(folder: Path, key: str) -> AugmentedSet | None:
    manifest = folder / MANIFEST
    if not manifest.is_file():
        return None
    data = json.loads(manifest.read_text())
    if data.get("key") != key:
        return None
    items = [AugmentedItem(i["kind"], i["file"], i["prompt"], tuple(i["concepts"])) for i in
             data["items"]]  # fmt: skip
    return AugmentedSet(folder, items, float(data["build_seconds"]), reused=True)


def load_or_build(
    concepts: list[ConceptPhotos],
    general: dict[str, list[Image.Image]],
    settings: AugmentationSettings,
    size: int,
    seed: int,
    progress: bool = True,
) -> AugmentedSet:
    """The cached set for these inputs, built first if there is none."""
    check_buildable(settings, len(concepts))
    key = set_key(concepts, general, settings, size, seed)
    root = Path(settings.cache_dir) if settings.cache_dir else cache_root() / "augmented"
    folder = root / key
    cached = _load(folder, key)
    if cached is not None:
        return cached
    staging = root / f".{key}.building-{time.time_ns()}"
    for kind in ("g_aug", "r_aug", "m_aug"):
        (staging / kind).mkdir(parents=True, exist_ok=True)
    start, items = time.perf_counter(), []
    total = sum(planned_counts(settings, len(concepts)).values())
    try:
        with tqdm(total=total, desc="CLIF augmented data", unit="img", disable=not progress) as bar:
            for item, image in _generate(concepts, general, settings, size, seed):
                image.save(staging / item.file)
                items.append(item)
                bar.update(1)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # a failed build leaves nothing behind
        raise
    seconds = time.perf_counter() - start
    manifest = {
        "key": key,
        "version": BUILD_VERSION,
        "size": size,
        "seed": seed,
        "options": settings.build_options(),
        "concepts": [
            {
                "token": c.spec.token,
                "class_word": c.spec.class_word,
                "photos": c.names,
                "mask_dir": c.mask_dir,
            }
            for c in concepts
        ],  # fmt: skip
        "counts": {k: sum(i.kind == k for i in items) for k in ("g_aug", "r_aug", "m_aug")},
        "build_seconds": round(seconds, 3),
        "items": [
            {"kind": i.kind, "file": i.file, "prompt": i.prompt, "concepts": list(i.concepts)}
            for i in items
        ],  # fmt: skip
    }
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=1))
    # Another process (another node's rank zero on a shared disk) may have placed the same
    # set meanwhile: its bytes are these bytes, so keep it and drop ours.
    try:
        if _load(folder, key) is None:
            swap_in(staging, folder)
    except OSError:
        if _load(folder, key) is None:
            raise
    shutil.rmtree(staging, ignore_errors=True)
    return AugmentedSet(folder, items, seconds, reused=False)
