"""DreamBooth: what trains, exact resume with prior preservation, the full-pipeline export."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from baseline_checks import assert_resumed_matches
from diffusers import DDIMScheduler, StableDiffusionPipeline
from export_sampling import fresh_pipe, module_sample, pipe_sample
from helpers import (
    CLASS_PROMPT,
    optimizer_with_lr,
    snapshot,
    tiny_datamodule,
    tiny_trainer,
    write_class_folder,
)
from lightning.pytorch.callbacks import ModelCheckpoint
from safetensors.torch import load_file

from core.concept import ConceptSpec
from datamodules.extras.class_images import ClassImageOptions
from exports.external_formats import A1111_FOLDER
from exports.single_file import SINGLE_FILE
from models import DreamBooth

PROMPT = "a photo of a <v1> toy"
TOKEN_MATRIX = "text_encoder.embeddings.token_embedding.base.weight"
TOKEN_VECTORS = "text_encoder.embeddings.token_embedding.vectors"


class RecordModes(L.Callback):
    """Train/eval mode of the components during each training step."""

    def __init__(self) -> None:
        self.seen: set[tuple[bool, bool, bool]] = set()

    def on_train_batch_start(self, trainer: L.Trainer, module: Any, *args: Any) -> None:
        self.seen.add((module.unet.training, module.text_encoder.training, module.vae.training))


def build(class_dir: Path, **overrides: Any) -> tuple[DreamBooth, Any]:
    datamodule = tiny_datamodule(
        class_images=ClassImageOptions(folder=str(class_dir), prompt=CLASS_PROMPT, count=3)
    )
    settings: dict[str, Any] = {
        "concepts": datamodule.concepts,
        "optimizer": optimizer_with_lr(1e-3),
        "prior_loss_weight": 1.0,
    }
    settings.update(overrides)
    return DreamBooth(**settings), datamodule


@pytest.fixture(scope="module")
def class_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_class_folder(tmp_path_factory.mktemp("dreambooth") / "cls", count=3)


@pytest.mark.parametrize("train_text_encoder", [False, True])
def test_only_the_intended_parameters_change(
    train_text_encoder: bool, class_dir: Path, tmp_path: Path
) -> None:
    module, datamodule = build(class_dir, train_text_encoder=train_text_encoder)
    state = module.state_dict()
    expected = {k for k in state if k.startswith("unet.")}
    if train_text_encoder:
        expected |= {
            k for k in state
            if k.startswith("text_encoder.") and k not in (TOKEN_MATRIX, TOKEN_VECTORS)
        }  # fmt: skip
    assert module.trainable_state_keys() == expected
    assert set(module.trainable_groups()) == (
        {"unet", "text_encoder"} if train_text_encoder else {"unet"}
    )
    modes = RecordModes()
    trainer = tiny_trainer(tmp_path, max_steps=2, callbacks=[modes])
    before = snapshot(module)
    trainer.fit(module, datamodule=datamodule)
    assert modes.seen == {(True, train_text_encoder, False)}  # (unet, text encoder, vae)
    assert "train/loss/prior" in trainer.callback_metrics
    after = module.state_dict()
    for key, value in before.items():
        if key in expected:
            assert not torch.equal(after[key], value), f"{key} should have trained"
        else:
            assert torch.equal(after[key], value), f"frozen {key} changed"


def test_resume_from_a_mid_epoch_checkpoint_is_exact(class_dir: Path, tmp_path: Path) -> None:
    straight, datamodule = build(class_dir)
    tiny_trainer(tmp_path / "a", max_steps=4).fit(straight, datamodule=datamodule)

    first, datamodule = build(class_dir)
    every_two = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=2, save_top_k=-1)
    tiny_trainer(tmp_path / "b", max_steps=2, callbacks=[every_two]).fit(
        first, datamodule=datamodule
    )
    checkpoint = tmp_path / "ckpt" / "epoch=0-step=2.ckpt"
    saved = torch.load(checkpoint, weights_only=True)
    assert set(saved["state_dict"]) == first.trainable_state_keys()  # UNet only, no VAE/TE

    resumed, datamodule = build(class_dir)
    trainer = tiny_trainer(tmp_path / "c", max_steps=4)
    trainer.fit(resumed, datamodule=datamodule, ckpt_path=checkpoint)
    assert trainer.global_step == 4
    assert_resumed_matches(straight, first, resumed)


def test_gradient_checkpointing_gives_the_same_gradients(class_dir: Path) -> None:
    grads = []
    for checkpointing in (False, True):
        module, datamodule = build(
            class_dir, gradient_checkpointing=checkpointing, train_text_encoder=True
        )
        datamodule.request({"class_pixel_values", "class_prompts"}, "test")
        module.train()
        batch = next(iter(datamodule.train_dataloader()))
        module.compute_losses(batch, module.sample_draws(batch, 0))["total"].backward()
        assert module.unet.is_gradient_checkpointing == checkpointing
        assert module.text_encoder.is_gradient_checkpointing == checkpointing
        grads.append({n: p.grad.clone() for n, p in module.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-6, rtol=1e-4), name


def test_multi_vector_tokens_are_refused() -> None:
    with pytest.raises(ValueError, match="num_vectors: 1"):
        DreamBooth(concepts=[ConceptSpec("<v1>", "toy")], num_vectors=2)


# ----- export ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[DreamBooth, Path, list[Path]]:
    """Trained-looking weights: seeded noise on the UNet and text encoder, a random token."""
    module = DreamBooth(
        concepts=[ConceptSpec("<v1>", "toy")], train_text_encoder=True, export_single_file=True
    )
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in module.parameters():
            if param.requires_grad:
                param.add_(0.05 * torch.randn(param.shape, generator=generator))
        vectors = module.concept_tokens.embedding.vectors
        vectors.copy_(torch.randn(vectors.shape, generator=generator))
    folder = tmp_path_factory.mktemp("dreambooth-export")
    return module, folder, module.export(folder)


def test_export_is_a_plain_pipeline_folder(
    exported: tuple[DreamBooth, Path, list[Path]],
) -> None:
    module, folder, written = exported
    assert (folder / "model_index.json") in written
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (folder / part).is_dir()
    weights = load_file(folder / "text_encoder" / "model.safetensors")
    assert not any("vectors" in k or "token_embedding.base" in k for k in weights)
    (matrix,) = [v for k, v in weights.items() if k.endswith("token_embedding.weight")]
    live = module.concept_tokens.embedding
    assert matrix.shape[0] == len(module.tokenizer) == live.base.num_embeddings + 1
    assert torch.equal(matrix[:-1], live.base.weight)
    assert torch.equal(matrix[-1], live.vectors[0])


@pytest.mark.smoke
def test_export_loads_in_diffusers_and_samples_what_generate_samples(
    exported: tuple[DreamBooth, Path, list[Path]], tiny_sd_path: Path
) -> None:
    module, folder, _ = exported
    pipe = StableDiffusionPipeline.from_pretrained(folder)
    assert isinstance(pipe.scheduler, DDIMScheduler)
    assert isinstance(pipe.text_encoder.get_input_embeddings(), torch.nn.Embedding)
    assert "<v1>" in pipe.tokenizer.tokenize(PROMPT)
    ours = module_sample(module)
    loaded = pipe_sample(pipe)
    assert torch.allclose(ours, loaded, atol=1e-4, rtol=0), (ours - loaded).abs().max()
    base = pipe_sample(fresh_pipe(tiny_sd_path))
    assert (ours - base).abs().max() > 1e-2  # the export carries the training


@pytest.mark.smoke
def test_single_file_loads_with_from_single_file_and_samples_the_same(
    exported: tuple[DreamBooth, Path, list[Path]], tiny_sd_path: Path
) -> None:
    """``sd_checkpoint.safetensors`` (original layout, as A1111 / ComfyUI load it) plus the
    concept's A1111 embedding: diffusers' own single-file loader samples the module's images."""
    module, folder, written = exported
    assert folder / SINGLE_FILE in written and folder / A1111_FOLDER / "v1.safetensors" in written
    pipe = StableDiffusionPipeline.from_single_file(
        folder / SINGLE_FILE, config=str(tiny_sd_path), safety_checker=None, local_files_only=True
    )
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.load_textual_inversion(folder / A1111_FOLDER / "v1.safetensors", token="<v1>")
    ours, loaded = module_sample(module), pipe_sample(pipe)
    assert torch.allclose(ours, loaded, atol=1e-4, rtol=0), (ours - loaded).abs().max()
