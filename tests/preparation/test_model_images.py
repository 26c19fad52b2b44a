"""Generating missing class images: counts, names and seeds, reuse, DDP split, errors."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import CLASS_PROMPT, optimizer_with_lr, tiny_datamodule, tiny_trainer
from helpers import write_class_folder as write_images
from PIL import Image

from datamodules.extras.class_images import ClassImageOptions
from models import CustomDiffusion, DreamBooth, TextualInversion
from preparation.model_images import class_file_name, generate_class_images, missing_indices


def folder_state(folder: Path) -> dict[str, tuple[int, bytes]]:
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(folder.iterdir())}


def constant_images(calls: list[list[int]]):  # noqa: ANN201 (a test double)
    """A generate() stand-in: image i is filled with seeds[i] / 255, and each call is kept."""

    def generate(prompts: list[str], seeds: list[int]) -> torch.Tensor:
        assert len(prompts) == len(seeds)
        calls.append(list(seeds))
        return torch.tensor(seeds, dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 3, 8, 8) / 255

    return generate


def test_missing_count_is_generated_with_index_names_and_seeds(tmp_path: Path) -> None:
    folder = tmp_path / "cls"
    write_images(folder, count=1)  # a user image ...
    Image.new("RGB", (8, 8)).save(folder / class_file_name(1))  # ... and one from a past run
    before = folder_state(folder)
    module = TextualInversion(concepts=tiny_datamodule().concepts)
    calls: list[list[int]] = []

    def generate(prompts: list[str], seeds: list[int]) -> torch.Tensor:
        calls.append(list(seeds))
        return module.generate(prompts, seeds=seeds, num_inference_steps=2, resolution=32)

    written = generate_class_images(generate, folder, CLASS_PROMPT, 5, batch_size=2)
    # 2 there, 3 missing: indices 0, 2, 3 (1 is taken), in batches of 2.
    assert [p.name for p in written] == [class_file_name(i) for i in (0, 2, 3)]
    assert calls == [[0, 2], [3]]
    assert len(list(folder.iterdir())) == 5
    assert {k: v for k, v in folder_state(folder).items() if k in before} == before
    # Seed = index: image 2 is what the model samples alone from seed 2.
    alone = module.generate([CLASS_PROMPT], seeds=[2], num_inference_steps=2, resolution=32)[0]
    saved = np.asarray(Image.open(folder / class_file_name(2)), dtype=np.float32) / 255
    assert saved.shape == (32, 32, 3)
    assert np.abs(saved - alone.permute(1, 2, 0).numpy()).max() <= 1.5 / 255
    assert missing_indices(folder, 5) == []


def test_a_full_folder_is_reused_untouched(tmp_path: Path) -> None:
    folder = write_images(tmp_path / "cls", count=3)
    before = folder_state(folder)
    calls: list[list[int]] = []
    assert generate_class_images(constant_images(calls), folder, CLASS_PROMPT, 3) == []
    assert generate_class_images(constant_images(calls), folder, CLASS_PROMPT, 2) == []
    assert calls == [] and folder_state(folder) == before


def test_ranks_split_the_missing_indices_and_meet_at_barriers(tmp_path: Path) -> None:
    folder = tmp_path / "new" / "cls"  # does not exist yet: created
    barrier = threading.Barrier(2, timeout=30)
    calls: dict[int, list[list[int]]] = {0: [], 1: []}
    written: dict[int, list[Path]] = {}

    def rank(r: int) -> None:
        written[r] = generate_class_images(
            constant_images(calls[r]), folder, CLASS_PROMPT, 7,
            rank=r, world_size=2, barrier=barrier.wait, batch_size=2,
        )  # fmt: skip

    threads = [threading.Thread(target=rank, args=(r,)) for r in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert calls == {0: [[0, 2], [4, 6]], 1: [[1, 3], [5]]}
    assert [p.name for p in written[1]] == [class_file_name(i) for i in (1, 3, 5)]
    assert sorted(p.name for p in folder.iterdir()) == [class_file_name(i) for i in range(7)]
    pixel = np.asarray(Image.open(folder / class_file_name(5)))[0, 0]
    assert pixel.tolist() == [5, 5, 5]  # the file holds the image of its own index


def test_fit_generates_missing_class_images_before_training(tmp_path: Path) -> None:
    folder = tmp_path / "cls"
    datamodule = tiny_datamodule(
        class_images=ClassImageOptions(str(folder), CLASS_PROMPT, count=3, generation_steps=2),
    )  # fmt: skip
    # Custom Diffusion's paper trains with class images too: the mechanism is the base's.
    module = CustomDiffusion(
        concepts=datamodule.concepts, prior_loss_weight=1.0, optimizer=optimizer_with_lr(1e-3)
    )
    trainer = tiny_trainer(tmp_path, max_steps=1)
    trainer.fit(module, datamodule=datamodule)
    assert sorted(p.name for p in folder.iterdir()) == [class_file_name(i) for i in range(3)]
    assert trainer.global_step == 1 and "train/loss/prior" in trainer.callback_metrics
    # A second run finds the folder full and leaves it as it is.
    before = folder_state(folder)
    module = TextualInversion(concepts=datamodule.concepts, prior_loss_weight=1.0)
    tiny_trainer(tmp_path / "again", max_steps=1).fit(module, datamodule=datamodule)
    assert folder_state(folder) == before


def test_validate_neither_needs_nor_generates_class_images(tmp_path: Path) -> None:
    folder = tmp_path / "cls"
    datamodule = tiny_datamodule(class_images=ClassImageOptions(str(folder), CLASS_PROMPT))
    module = DreamBooth(concepts=datamodule.concepts, prior_loss_weight=1.0)
    trainer = tiny_trainer(tmp_path, max_steps=1, limit_val_batches=1)
    trainer.validate(module, datamodule=datamodule)
    assert "val/loss" in trainer.callback_metrics
    assert not folder.exists()


def test_unreadable_class_image_fails_before_training(tmp_path: Path) -> None:
    folder = write_images(tmp_path / "cls", count=3)
    (folder / "img-2.png").write_bytes(b"\x89PNG broken")
    datamodule = tiny_datamodule(
        class_images=ClassImageOptions(folder=str(folder), prompt=CLASS_PROMPT, count=3)
    )
    module = DreamBooth(concepts=datamodule.concepts, prior_loss_weight=1.0)
    trainer = tiny_trainer(tmp_path, max_steps=2)
    with pytest.raises(ValueError, match="Prior preservation needs .*img-2.png"):
        trainer.fit(module, datamodule=datamodule)
    assert trainer.global_step == 0


def test_prior_without_a_class_folder_fails_before_training(tmp_path: Path) -> None:
    datamodule = tiny_datamodule(class_images=ClassImageOptions(prompt=CLASS_PROMPT))
    module = DreamBooth(concepts=datamodule.concepts, prior_loss_weight=1.0)
    trainer = tiny_trainer(tmp_path, max_steps=2)
    with pytest.raises(ValueError, match="set data.init_args.class_images.folder"):
        trainer.fit(module, datamodule=datamodule)
    assert trainer.global_step == 0
