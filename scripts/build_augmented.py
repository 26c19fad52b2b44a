"""Build CLIF's augmented set for photo folders, time it, and write grids to look at.

    python scripts/build_augmented.py --concept dog=../shared/data/dreambench/dog \
        --concept cat=../shared/data/dreambench/cat --general ../shared/data/dreambench \
        --out runs/augmented_look --runs 3

Each ``--concept class_word=folder`` becomes <v1>, <v2>, ... (5 photos each at most with
``--photos 5``). ``--general`` is a folder of general-concept subfolders (G-Aug's context
images; DreamBench's other subjects will do). Each run builds into a fresh cache, so the time
is a full build (segmentation, then G/R/M-Aug), reported as median and spread; segmentation
alone is timed once more on its own. ``--out`` gets the masks over the photos and a grid per
kind with its prompts.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.concept import ConceptSpec  # noqa: E402
from preparation.augmentation.build import load_or_build  # noqa: E402
from preparation.augmentation.settings import AugmentationSettings  # noqa: E402
from preparation.augmentation.sources import (  # noqa: E402
    ConceptPhotos,
    build_backends,
    segment_concept,
)
from preparation.photos import list_image_files, load_rgb_image  # noqa: E402


def concepts_from(specs: list[str], photos: int) -> list[ConceptPhotos]:
    concepts = []
    for index, spec in enumerate(specs, start=1):
        class_word, _, folder = spec.partition("=")
        files = list_image_files(folder)[:photos]
        concepts.append(ConceptPhotos(ConceptSpec(f"<v{index}>", class_word),
                                      [load_rgb_image(f) for f in files],
                                      [f.name for f in files]))  # fmt: skip
    return concepts


def general_from(folder: str | None, names: list[str], per_name: int) -> dict[str, list]:
    if folder is None:
        return {}
    return {name: [load_rgb_image(f) for f in
                   list_image_files(Path(folder) / name.replace(" ", "_"))[:per_name]]
            for name in names}  # fmt: skip


def mask_overlay(photo: Image.Image, mask: np.ndarray) -> Image.Image:
    """The photo, background dimmed and tinted, so the mask's edge shows."""
    pixels = np.asarray(photo, np.float32)
    dim = pixels * 0.3 + np.array([0, 0, 120], np.float32) * 0.7
    return Image.fromarray(np.where(mask[..., None], pixels, dim).astype(np.uint8))


def save_row(images: list[Image.Image], path: Path, side: int = 192) -> None:
    row = Image.new("RGB", (side * len(images), side), "white")
    for i, image in enumerate(images):
        row.paste(image.resize((side, side)), (i * side, 0))
    row.save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--concept", action="append", required=True, help="class_word=folder")
    parser.add_argument("--general", help="folder of general-concept subfolders")
    parser.add_argument("--general-names", nargs="*",
                        default=["teapot", "vase", "clock", "candle", "rc_car"])  # fmt: skip
    parser.add_argument("--photos", type=int, default=5)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--counts", type=int, nargs=3, default=[40, 40, 40], help="G R M")
    parser.add_argument("--segmenter", default="fallback")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    concepts = concepts_from(args.concept, args.photos)
    general = general_from(args.general, args.general_names, 4)
    g, r, m = args.counts
    times, built = [], None
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory() as cache:
            settings = AugmentationSettings(
                g_aug=g if general else 0, r_aug=r, m_aug=m if len(concepts) > 1 else 0,
                segmenter=args.segmenter, general_concepts=tuple(general) or ("none",),
                general_data_dir="given", cache_dir=cache,
            )  # fmt: skip
            start = time.perf_counter()
            built = load_or_build(concepts, general, settings, args.size, 0, progress=False)
            times.append(time.perf_counter() - start)
            if args.out:
                write_look(built, concepts, settings, args.size, args.out)
    segmenter, _ = build_backends(settings, True)
    start = time.perf_counter()
    for concept in concepts:
        segment_concept(concept, args.size, segmenter)
    segmentation = time.perf_counter() - start
    counts = {k: len(built.of_kind(k)) for k in ("g_aug", "r_aug", "m_aug")}
    photos = sum(len(c.photos) for c in concepts)
    spread = f"{min(times):.2f}-{max(times):.2f}"
    print(f"{len(concepts)} concepts x {photos // len(concepts)} photos, {args.size} px, "
          f"{args.segmenter}: {counts}")  # fmt: skip
    print(f"build: median {statistics.median(times):.2f} s ({spread}, {args.runs} runs); "
          f"segmentation alone {segmentation:.2f} s")  # fmt: skip


def write_look(built, concepts, settings, size: int, out: Path) -> None:  # noqa: ANN001
    out.mkdir(parents=True, exist_ok=True)
    segmenter, _ = build_backends(settings, True)
    for concept in concepts:
        segmented = segment_concept(concept, size, segmenter)
        overlays = [mask_overlay(s.photo, s.mask) for s in segmented]
        save_row(overlays, out / f"masks_{concept.spec.class_word}.png")
    for kind in ("g_aug", "r_aug", "m_aug"):
        items = built.of_kind(kind)
        if not items:
            continue
        chosen = items[:: max(1, len(items) // 8)][:8]
        save_row([built.image(i) for i in chosen], out / f"{kind}.png")
        (out / f"{kind}.txt").write_text("\n".join(i.prompt for i in chosen) + "\n")


if __name__ == "__main__":
    main()
