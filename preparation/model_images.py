"""Images the base model makes before training: DreamBooth's class images and CLIF's general
concepts, generated into their folders through a pipeline object the model hands over.

DreamBooth's class images come from the frozen model itself ("a photo of a dog"), so that the
prior loss pulls the fine-tuned model back to what it generated before. When a folder holds
fewer images than wanted, the missing ones are sampled here: batched, split across DDP ranks
(rank r takes missing indices r, r+W, ...), written as ``class-00042.png`` with seed 42, so a
rerun or another rank skips what exists and an interrupted run resumes. A folder that is
already full is left untouched. Nothing here imports a model: ``ImagePipeline`` is what the
DataModule needs of one (models/base.py ``image_pipeline`` provides it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from PIL import Image
from tqdm.auto import tqdm

from core.atomic import write_file_atomically
from preparation.photos import IMAGE_SUFFIXES

BATCH_SIZE = 4

GenerateFn = Callable[[list[str], list[int]], torch.Tensor]


class ImagePipeline(Protocol):
    """The model as an image maker: ``generate`` returns images in [0, 1], (B, 3, H, W); under
    DDP each rank makes its share and ``barrier`` meets the others."""

    rank: int
    world_size: int

    def generate(
        self, prompts: list[str], seeds: list[int], resolution: int, steps: int
    ) -> torch.Tensor: ...

    def barrier(self) -> None: ...


@dataclass(frozen=True)
class ImageFolderJob:
    """One folder to fill: ``count`` images of ``prompt`` at ``resolution`` px."""

    folder: str
    prompt: str
    count: int
    resolution: int
    steps: int


def list_class_images(folder: str | Path) -> list[Path]:
    """Image files of the class folder by name ([] when it does not exist yet)."""
    path = Path(folder)
    if not path.is_dir():
        return []
    return sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def class_file_name(index: int) -> str:
    return f"class-{index:05d}.png"


def missing_indices(folder: str | Path, num_images: int) -> list[int]:
    """Indices to generate so the folder holds ``num_images`` images, skipping taken names."""
    existing = list_class_images(folder)
    needed = num_images - len(existing)
    taken = {p.name for p in existing}
    indices: list[int] = []
    index = 0
    while len(indices) < needed:
        if class_file_name(index) not in taken:
            indices.append(index)
        index += 1
    return indices


def _save_png(image: torch.Tensor, path: Path) -> None:
    """Write atomically: a half-written file must never count as an existing class image."""
    array = (image.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8)
    picture = Image.fromarray(np.ascontiguousarray(array.permute(1, 2, 0).numpy()))
    # The partial file's suffix is no image suffix, so it is never listed as a class image.
    write_file_atomically(path, lambda handle: picture.save(handle, "PNG"))


def generate_class_images(
    generate: GenerateFn,
    folder: str | Path,
    prompt: str,
    num_images: int,
    rank: int = 0,
    world_size: int = 1,
    barrier: Callable[[], None] = lambda: None,
    batch_size: int = BATCH_SIZE,
) -> list[Path]:
    """Fill ``folder`` up to ``num_images`` images; return the files this rank wrote.

    ``generate(prompts, seeds)`` returns images in [0, 1], shape (B, 3, H, W). Every rank lists
    the folder before any rank writes (first barrier), and no rank goes on before all have
    written (second barrier), so each sees the same full folder afterwards.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"class image folder {str(folder)!r} is a file, not a folder.")
    indices = missing_indices(folder, num_images)
    if not indices:  # nobody writes, so every rank sees this same answer
        return []
    folder.mkdir(parents=True, exist_ok=True)
    barrier()
    mine = indices[rank::world_size]
    if rank == 0:
        rank_zero_info(
            f"Generating {len(indices)} class images of {prompt!r} into {folder} "
            f"({world_size} process(es), {len(mine)} on this one)."
        )
    written: list[Path] = []
    # Rank zero's share stands for the whole (the ranks' shares differ by one at most).
    progress = tqdm(total=len(mine), desc="class images", unit="img", disable=rank != 0)
    for start in range(0, len(mine), batch_size):
        chunk = mine[start : start + batch_size]
        images = generate([prompt] * len(chunk), chunk)
        for index, image in zip(chunk, images, strict=True):
            path = folder / class_file_name(index)
            _save_png(image, path)
            written.append(path)
        progress.update(len(chunk))
    progress.close()
    barrier()
    return written


def fill_folders(pipeline: ImagePipeline, jobs: list[ImageFolderJob]) -> list[Path]:
    """The entry point (the DataModule's ``setup``): each folder filled to its count by the
    pipeline, every rank taking its share; the files this rank wrote."""
    written: list[Path] = []
    for job in jobs:

        def generate(
            prompts: list[str], seeds: list[int], job: ImageFolderJob = job
        ) -> torch.Tensor:
            return pipeline.generate(prompts, seeds, job.resolution, job.steps)

        written += generate_class_images(
            generate,
            job.folder,
            job.prompt,
            job.count,
            rank=pipeline.rank,
            world_size=pipeline.world_size,
            barrier=pipeline.barrier,
        )
    return written
