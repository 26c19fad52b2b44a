"""Helpers shared by tests: paths and a small, quiet training run on the tiny pipeline."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from PIL import Image

from datamodules.personalization import PersonalizationDataModule
from models.base import PersonalizationModule

REPO_ROOT = Path(__file__).resolve().parents[1]


def is_overlay(config: Path) -> bool:
    """An overlay (configs/tiny.yaml, low_memory.yaml, backbones/*.yaml) names no model class:
    it is given after an experiment config and changes some of its options."""
    import yaml

    settings = yaml.safe_load(config.read_text()) or {}
    return "class_path" not in (settings.get("model") or {})
DREAMBENCH = REPO_ROOT.parent / "shared" / "data" / "dreambench"


def tiny_datamodule(**overrides: Any) -> PersonalizationDataModule:
    """Synthetic toy at 32 px, batch 2, 3 repeats: 15 samples, 8 batches an epoch."""
    settings: dict[str, Any] = {"resolution": 32, "batch_size": 2, "repeats": 3, "seed": 0}
    settings.update(overrides)
    return PersonalizationDataModule(**settings)


def tiny_trainer(root: Path, max_steps: int, **overrides: Any) -> L.Trainer:
    """CPU trainer with no logger; checkpoints every 3 steps if `checkpoint` is left on."""
    callbacks = overrides.pop("callbacks", [])
    if overrides.pop("checkpoint", False):
        callbacks.append(
            ModelCheckpoint(dirpath=root / "ckpt", every_n_train_steps=3, save_top_k=-1)
        )
    settings: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 1,
        "max_steps": max_steps,
        "logger": False,
        "enable_checkpointing": bool(callbacks),
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "limit_val_batches": 0,
        "default_root_dir": str(root),
        "callbacks": callbacks,
    }
    settings.update(overrides)
    return L.Trainer(**settings)


def optimizer_with_lr(lr: float) -> Any:
    """An optimizer callable with a large learning rate so a few steps visibly move weights."""
    return lambda params: torch.optim.AdamW(params, lr=lr)


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Copies of every tensor in the module's state dict."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def parameters_reached(module: torch.nn.Module, loss: torch.Tensor) -> set[str]:
    """Names of the trainable parameters that get a non-zero gradient from ``loss``."""
    trainable = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, [p for _, p in trainable], allow_unused=True)
    return {n for (n, _), g in zip(trainable, grads) if g is not None and g.abs().sum() > 0}


def trainable_state(module: PersonalizationModule) -> dict[str, torch.Tensor]:
    keys = module.trainable_state_keys()
    return {k: v.detach().clone() for k, v in module.state_dict().items() if k in keys}


CLASS_PROMPT = "a photo of a toy"


def write_class_folder(folder: Path, count: int = 3, size: tuple[int, int] = (48, 40)) -> Path:
    """Prior preservation's class images without generating them: solid colours with a white
    left edge (so crops, flips and which image was chosen are visible), ``img-<i>.png``."""
    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        array = np.zeros((size[1], size[0], 3), dtype=np.uint8)
        array[:] = colours[index % len(colours)]
        array[:, : size[0] // 4] = 255
        Image.fromarray(array).save(folder / f"img-{index}.png")
    return folder


def gradient_image(width: int, height: int) -> Image.Image:
    """An RGB image whose every pixel differs (crops and resizes show in the values)."""
    xs = np.linspace(0, 255, width, dtype=np.float32)[None, :].repeat(height, 0)
    ys = np.linspace(0, 255, height, dtype=np.float32)[:, None].repeat(width, 1)
    rgb = np.stack([xs, ys, 255 - xs], -1).round().astype(np.uint8)
    return Image.fromarray(rgb, "RGB")


class SlowSteps(L.Callback):
    """Sleeps after each step, so a test can kill a run from outside while it trains."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_train_batch_end(self, *args: Any) -> None:
        time.sleep(self.seconds)


class SignalAt(L.Callback):
    """Sends ``signum`` to this process at the start of step ``step`` (mid-step, as a user)."""

    def __init__(self, signum: int, step: int) -> None:
        self.signum, self.step = signum, step

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


RED = (220, 30, 30)


def write_photos_and_masks(root: Path, count: int = 3) -> tuple[Path, Path]:
    """Photos of a red square (a different place each) on grey, and its masks."""
    photos, masks = root / "photos", root / "masks"
    photos.mkdir(parents=True)
    masks.mkdir(parents=True)
    for index in range(count):
        photo = Image.new("RGB", (96, 72), (120, 120, 120))
        mask = Image.new("L", (96, 72), 0)
        box = (10 + 20 * index, 12, 40 + 20 * index, 50)
        photo.paste(RED, box)
        mask.paste(255, box)
        photo.save(photos / f"{index:02d}.png")
        mask.save(masks / f"{index:02d}.png")
    return photos, masks


ASPECT_SIZES = [(96, 48), (60, 90), (64, 64), (100, 52), (48, 80), (70, 70)]


def write_photos(folder: Path) -> Path:
    """Plain photos of several aspect ratios (ASPECT_SIZES), one shade each."""
    folder.mkdir(parents=True)
    for index, (width, height) in enumerate(ASPECT_SIZES):
        shade = 40 * index
        Image.new("RGB", (width, height), (shade, 255 - shade, 90)).save(folder / f"{index}.png")
    return folder


def clif_two_step_options(root: Path) -> list[str]:
    """A two-step CLIF stage on the tiny overlay: no callbacks, R-Aug pairs only, cached
    under ``root`` (the options both CLIF stage tests pass)."""
    return [
        "--trainer.max_steps", "2", "--trainer.enable_progress_bar", "false",
        "--trainer.callbacks", "[]",
        "--data.init_args.augmentation.g_aug", "0", "--data.init_args.augmentation.r_aug", "4",
        "--data.init_args.augmentation.cache_dir", str(root / "augmented"),
    ]  # fmt: skip
