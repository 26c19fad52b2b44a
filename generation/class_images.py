"""Generate the class images prior preservation trains on, with the base model, before training.

DreamBooth's class images come from the frozen model itself ("a photo of a dog"), so that the
prior loss pulls the fine-tuned model back to what it generated before. When the class folder
holds fewer than ``num_class_images`` images, the missing ones are sampled here: batched, split
across DDP ranks (rank r takes missing indices r, r+W, ...), written as ``class-00042.png``
with seed 42, so a rerun or another rank skips what exists and an interrupted run resumes.
A folder that is already full is left untouched.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from PIL import Image
from tqdm.auto import tqdm

from core.atomic import write_file_atomically
from datamodules.extras.class_images import list_class_images

if TYPE_CHECKING:
    from models.base import PersonalizationModule

# diffusers' DreamBooth script samples class images with the pipeline's defaults (the step
# count, 50 there, is the DataModule's class_generation_steps).
GUIDANCE_SCALE = 7.5
BATCH_SIZE = 4

GenerateFn = Callable[[list[str], list[int]], torch.Tensor]


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
        raise NotADirectoryError(f"class_data_dir {str(folder)!r} is a file, not a folder.")
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


def base_model_sampler(module: PersonalizationModule, resolution: int, steps: int) -> GenerateFn:
    """``generate(prompts, seeds)`` with the (still untrained) module, from its setup."""
    trainer = module.trainer

    def generate(prompts: list[str], seeds: list[int]) -> torch.Tensor:
        # Setup runs before Lightning moves the model, so move it now rather than sample on CPU.
        module.to(trainer.strategy.root_device)
        was_training = module.training
        module.eval()
        try:
            with trainer.precision_plugin.forward_context():
                return module.generate(
                    prompts,
                    seeds=seeds,
                    resolution=resolution,
                    num_inference_steps=steps,
                    guidance_scale=GUIDANCE_SCALE,
                )
        finally:
            module.train(was_training)

    return generate


def _fill(module: PersonalizationModule, folder: str, prompt: str, count: int, steps: int,
          resolution: int) -> list[Path]:  # fmt: skip
    trainer = module.trainer
    return generate_class_images(
        base_model_sampler(module, resolution, steps),
        folder,
        prompt,
        count,
        rank=trainer.global_rank,
        world_size=trainer.world_size,
        barrier=lambda: trainer.strategy.barrier("class_images"),
    )


def prepare_class_images(module: PersonalizationModule, datamodule: Any) -> list[Path]:
    """From the module's setup: generate the DataModule's missing class images, if any.

    Unset options are left to the DataModule's request, which names the option to set.
    """
    folder = getattr(datamodule, "class_data_dir", None)
    prompt = getattr(datamodule, "class_prompt", None)
    if folder is None or prompt is None:
        return []
    steps = int(getattr(datamodule, "class_generation_steps", 50))
    count = int(datamodule.num_class_images)
    return _fill(module, folder, prompt, count, steps, int(datamodule.resolution))


def prepare_generated_images(module: PersonalizationModule, datamodule: Any) -> list[Path]:
    """From the module's setup: the other images the DataModule wants from the base model
    (``images_to_generate()``: CLIF's general concepts), each folder filled to its count."""
    wanted = getattr(datamodule, "images_to_generate", lambda: [])()
    settings = getattr(datamodule, "augmentation", None)
    steps = int(getattr(settings, "general_generation_steps", 25))
    written: list[Path] = []
    for folder, prompt, count, side in wanted:
        written += _fill(module, folder, prompt, count, steps, side)
    return written
