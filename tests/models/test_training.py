"""Training on the tiny pipeline: what changes, what stays, checkpoints and exact resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from baseline_checks import (
    assert_only_trainable_changed,
    assert_resume_is_exact,
    assert_trained_stay_fp32_under_bf16,
)
from helpers import (
    optimizer_with_lr,
    tiny_datamodule,
    tiny_trainer,
)

from models import CustomDiffusion, TextualInversion
from models.base import PersonalizationModule

BASELINES = {
    "textual_inversion": (TextualInversion, {"num_vectors": 2}, {}),
    "custom_diffusion": (CustomDiffusion, {}, {"rescale_augmentation": True}),
}


def build(name: str, **overrides: object) -> tuple[PersonalizationModule, object]:
    cls, model_args, data_args = BASELINES[name]
    datamodule = tiny_datamodule(**data_args)
    settings = {"concepts": datamodule.concepts, "optimizer": optimizer_with_lr(1e-2)}
    settings.update(model_args)
    settings.update(overrides)
    return cls(**settings), datamodule


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_only_the_intended_parameters_change(name: str, tmp_path: Path) -> None:
    module, datamodule = build(name)
    trained = module.trainable_state_keys()
    expected_trained = {"text_encoder.embeddings.token_embedding.vectors"}
    if name == "custom_diffusion":
        kv = {k for k in module.state_dict() if "attn2.processor.to_" in k}
        assert kv and all("_custom_diffusion" in k for k in kv)
        expected_trained |= kv
    assert trained == expected_trained
    assert_only_trainable_changed(module, datamodule, tmp_path, steps=4)
    # Every pre-existing embedding row is bitwise the same (the matrix was never resized).
    base = module.text_encoder.get_input_embeddings().base.weight
    new_rows = module.concept_tokens.embedding.vectors.shape[0]
    assert new_rows == (2 if name == "textual_inversion" else 1)
    assert base.shape[0] == len(module.tokenizer) - new_rows


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_resume_from_a_mid_epoch_checkpoint_is_exact(name: str, tmp_path: Path) -> None:
    assert_resume_is_exact(lambda: build(name), tmp_path)  # step 3 of the epoch's 8 batches


def test_checkpoint_holds_only_trained_weights_and_loads_weights_only(tmp_path: Path) -> None:
    module, datamodule = build("custom_diffusion")
    tiny_trainer(tmp_path, max_steps=3, checkpoint=True).fit(module, datamodule=datamodule)
    checkpoint = torch.load(tmp_path / "ckpt" / "epoch=0-step=3.ckpt", weights_only=True)
    assert set(checkpoint["state_dict"]) == module.trainable_state_keys()
    assert checkpoint["optimizer_states"] and "loops" in checkpoint
    size = (tmp_path / "ckpt" / "epoch=0-step=3.ckpt").stat().st_size
    full = sum(v.numel() * v.element_size() for v in module.state_dict().values())
    assert size < full / 4


def test_checkpoint_of_another_baseline_is_a_clear_error(tmp_path: Path) -> None:
    module, datamodule = build("textual_inversion")
    tiny_trainer(tmp_path, max_steps=3, checkpoint=True).fit(module, datamodule=datamodule)
    other, datamodule = build("custom_diffusion")
    with pytest.raises(KeyError, match="lacks .* trained weights"):
        tiny_trainer(tmp_path / "x", max_steps=4).fit(
            other, datamodule=datamodule, ckpt_path=tmp_path / "ckpt" / "epoch=0-step=3.ckpt"
        )


def test_trained_weights_stay_fp32_under_bf16_mixed(tmp_path: Path) -> None:
    module, datamodule = build("custom_diffusion")
    assert_trained_stay_fp32_under_bf16(module, datamodule, tmp_path)


def test_frozen_components_stay_in_eval_mode_during_fit(tmp_path: Path) -> None:
    module, datamodule = build("textual_inversion")
    module.train()
    assert not module.unet.training and not module.vae.training
    assert not module.text_encoder.training


def test_learning_rate_groups_and_scaling(tmp_path: Path) -> None:
    module, datamodule = build("custom_diffusion", learning_rates={"tokens": 0.5}, scale_lr=True)
    trainer = tiny_trainer(tmp_path, max_steps=1)
    trainer.fit(module, datamodule=datamodule)
    groups = {g["name"]: g for g in trainer.optimizers[0].param_groups}
    assert set(groups) == {"tokens", "kv"}
    assert groups["tokens"]["lr"] == pytest.approx(0.5 * 2)  # batch 2 x 1 x 1 process
    assert groups["kv"]["lr"] == pytest.approx(1e-2 * 2)
    bad, datamodule = build("textual_inversion", learning_rates={"kv": 1e-3})
    with pytest.raises(ValueError, match="groups are \\['tokens'\\]"):
        tiny_trainer(tmp_path / "bad", max_steps=1).fit(bad, datamodule=datamodule)


def test_denoising_loss_matches_a_masked_mean_computed_by_hand() -> None:
    module, _ = build("textual_inversion")
    pred = torch.randn(2, 4, 3, 3)
    target = torch.randn(2, 4, 3, 3)
    mask = torch.zeros(2, 1, 3, 3)
    mask[0, :, :2, :2] = 1
    mask[1] = 1
    fields = {"model_pred": pred, "target": target, "loss_mask": mask, "loss_weights": None}
    record = type("Record", (), fields)
    first = ((pred[0, :, :2, :2] - target[0, :, :2, :2]) ** 2).mean()
    second = ((pred[1] - target[1]) ** 2).mean()
    expected = (first + second) / 2
    assert torch.allclose(module.denoising_loss(record), expected)
    record.loss_weights = torch.tensor([0.5, 3.0])  # flow matching's per-sample weights
    assert torch.allclose(module.denoising_loss(record), (0.5 * first + 3.0 * second) / 2)


def test_latent_cache_is_used_for_deterministic_images() -> None:
    module, datamodule = build("textual_inversion")
    batch = next(iter(datamodule.train_dataloader()))
    assert all(batch["cache_key"])
    draws = module.sample_draws(batch, 0)
    first = module.encode_latents(batch["pixel_values"], batch["cache_key"], draws)
    assert set(module._latent_cache) == set(batch["cache_key"])
    # The cached distribution is used: garbage pixels give the same latents for the same keys.
    again = module.encode_latents(
        torch.zeros_like(batch["pixel_values"]), batch["cache_key"], module.sample_draws(batch, 0)
    )
    assert torch.equal(first, again)


def test_lr_schedule_warmup_and_configurable_scheduler(tmp_path: Path) -> None:
    module, datamodule = build("textual_inversion", lr_warmup_steps=4)
    trainer = tiny_trainer(tmp_path, max_steps=2)
    trainer.fit(module, datamodule=datamodule)
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(1e-2 * 3 / 4)

    def halve_each_step(optimizer: torch.optim.Optimizer) -> object:
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)

    module, datamodule = build("textual_inversion", lr_scheduler=halve_each_step)
    trainer = tiny_trainer(tmp_path / "step", max_steps=3)
    trainer.fit(module, datamodule=datamodule)
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(1e-2 / 8)
