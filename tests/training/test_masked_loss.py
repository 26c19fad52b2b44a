"""The subject-masked loss (``background_loss_weight``): each sample's mask follows its own
crop, flip and rescale onto the subject; at weight 0 the background's latent cells get no
gradient, the subject's do, and the loss is the mask-weighted mean; class images stay
unweighted; masks from the segmenter when there is no folder; without either, one line."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import REPO_ROOT, optimizer_with_lr, write_class_folder, write_photos_and_masks
from PIL import Image
from test_user_errors import assert_one_clear_line

from datamodules.buckets import BucketSettings
from datamodules.extras.class_images import ClassImageOptions
from datamodules.personalization import PersonalizationDataModule
from models import LoRA
from preparation.augmentation.settings import AugmentationSettings
from train import run_from_command_line


def datamodule(root: Path, **options: object) -> PersonalizationDataModule:
    photos, masks = write_photos_and_masks(root)
    settings = {"random_crop": True, "rescale_augmentation": True, **options}
    return PersonalizationDataModule(
        instance_data_dir=str(photos), class_word="toy", mask_dir=str(masks), resolution=32,
        batch_size=2, repeats=4, **settings,
    )  # fmt: skip


@pytest.mark.parametrize(
    "options",
    [{}, {"buckets": BucketSettings(step=8), "rescale_augmentation": False}],
    ids=["square, rescaled", "aspect buckets"],
)
def test_each_samples_mask_lies_on_its_subject(tmp_path: Path, options: dict) -> None:
    data = datamodule(tmp_path, **options)
    data.request({"subject_mask"}, "test")
    dataset = data._dataset(augment=True, repeats=4)
    flipped_or_rescaled = 0
    for index in range(len(dataset)):
        sample = dataset[index]
        pixels = (sample["pixel_values"] + 1) / 2 * 255  # to_tensor gives [-1, 1]
        red = (pixels[0] > 180) & (pixels[1] < 80) & (pixels[2] < 80)
        mask = sample["subject_mask"][0] > 0.5
        disagree = (red != mask).float().mean()
        assert disagree < 0.08, f"sample {index}: mask and subject differ on {disagree:.0%}"
        flipped_or_rescaled += int(sample["loss_mask"].mean() < 1)
    if not options:
        assert flipped_or_rescaled  # some were shrunk onto the canvas: the mask followed


@pytest.fixture(scope="module")
def masked() -> LoRA:
    concepts = PersonalizationDataModule(resolution=32).concepts
    return LoRA(concepts=concepts, optimizer=optimizer_with_lr(1e-2), background_loss_weight=0.0)


@pytest.mark.smoke  # the newest allowed versions too
def test_at_weight_zero_the_background_gets_no_gradient(tmp_path: Path, masked: LoRA) -> None:
    module = masked
    data = datamodule(tmp_path)
    module.attach_datamodule(data)
    batch = next(iter(data.train_dataloader()))
    record = module.denoise(batch, module.sample_draws(batch, 0), with_prior=False)
    prediction = record.model_pred.detach().requires_grad_(True)
    record.model_pred = prediction
    weights = module.subject_weights(record)
    loss = module.denoising_loss(record, weights)
    (gradient,) = torch.autograd.grad(loss, prediction)
    background = (weights == 0).expand_as(gradient)
    subject = (weights > 0).expand_as(gradient) & (record.loss_mask > 0).expand_as(gradient)
    assert background.any() and subject.any()
    assert not gradient[background].any()
    assert gradient[subject].abs().sum() > 0
    # the weighted mean of the squared error, by hand
    share = F.adaptive_avg_pool2d(batch["subject_mask"], record.latents.shape[-2:])
    cell = (record.loss_mask * share).expand_as(prediction)
    error = (prediction.detach() - record.target) ** 2
    expected = ((error * cell).sum(dim=(1, 2, 3)) / cell.sum(dim=(1, 2, 3))).mean()
    assert torch.allclose(loss.detach(), expected, rtol=1e-5)


def test_class_images_stay_unweighted(tmp_path: Path) -> None:
    classes = write_class_folder(tmp_path / "class", count=2, size=(32, 32))
    options = ClassImageOptions(folder=str(classes), count=2)
    data = datamodule(tmp_path / "data", class_images=options)
    concepts = data.concepts
    module = LoRA(concepts=concepts, background_loss_weight=0.0, prior_loss_weight=1.0)
    module.attach_datamodule(data)
    batch = next(iter(data.train_dataloader()))
    draws = module.sample_draws(batch, 0)
    parts = module.compute_losses(batch, draws)["parts"]
    record = module.denoise(batch, draws)
    assert torch.allclose(parts["prior"], module.denoising_loss(record.prior))
    assert not torch.allclose(parts["denoise"], module.denoising_loss(record))


def test_with_no_mask_folder_the_segmenter_gives_the_masks(tmp_path: Path) -> None:
    photos, _ = write_photos_and_masks(tmp_path)
    data = PersonalizationDataModule(
        instance_data_dir=str(photos), class_word="toy", resolution=32,
        augmentation=AugmentationSettings(g_aug=0, r_aug=0, m_aug=0, segmenter="fallback"),
    )  # fmt: skip
    data.request({"subject_mask"}, "test")
    sample = data._dataset(augment=False, repeats=1)[0]
    share = float(sample["subject_mask"].mean())
    assert 0.1 < share < 0.9  # the red square, not the whole picture


def test_a_masked_loss_without_masks_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(REPO_ROOT)
    monkeypatch.setattr(sys, "argv", sys.argv[:1])
    code = run_from_command_line([
        "fit", "--config", "configs/lora.yaml", "--config", "configs/tiny.yaml",
        "--model.init_args.background_loss_weight", "0.1",
        "--trainer.default_root_dir", str(tmp_path),
    ])  # fmt: skip
    assert_one_clear_line(code, capsys.readouterr().err, "give data.init_args.mask_dir")
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


def test_masks_are_floats_in_zero_one() -> None:
    from datamodules.transforms import PhotoTransform, transformed_like

    mask = Image.fromarray(np.array([[0, 255], [255, 0]], dtype=np.uint8), mode="L")
    out = transformed_like(mask, PhotoTransform((2, 2), (0, 0), True, None), 2)
    assert out.tolist() == [[1.0, 0.0], [0.0, 1.0]]
