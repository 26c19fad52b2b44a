"""LoRA through peft: what trains, exact resume, the export diffusers' load_lora_weights reads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from baseline_checks import (
    assert_only_trainable_changed,
    assert_resumed_matches,
    assert_trained_stay_fp32_under_bf16,
)
from export_sampling import fresh_pipe, module_sample, pipe_sample
from helpers import optimizer_with_lr, tiny_datamodule, tiny_trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from peft.tuners.lora import LoraLayer
from safetensors import safe_open
from safetensors.torch import load_file

from core.concept import ConceptSpec
from exports.external_formats import A1111_FOLDER, KOHYA_LORA
from models import LoRA
from models.lora import LORA_WEIGHTS, load_lora

PROMPT = "a photo of a <v1> toy"
TOKEN_VECTORS = "text_encoder.embeddings.token_embedding.vectors"


def build(**overrides: Any) -> tuple[LoRA, Any]:
    datamodule = tiny_datamodule()
    settings: dict[str, Any] = {
        "concepts": datamodule.concepts,
        "optimizer": optimizer_with_lr(1e-2),
    }
    settings.update(overrides)
    return LoRA(**settings), datamodule


def lora_layers(model: torch.nn.Module) -> dict[str, LoraLayer]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LoraLayer)}


@pytest.mark.smoke
def test_adapters_sit_on_the_attention_projections_only() -> None:
    module, _ = build(rank=2, alpha=3.0, train_text_encoder=True)
    unet_targets = {n.rsplit(".", 1)[-1] if not n.endswith("to_out.0") else "to_out.0"
                    for n in lora_layers(module.unet)}  # fmt: skip
    assert unet_targets == {"to_q", "to_k", "to_v", "to_out.0"}
    attention = [n for n, _ in module.unet.named_modules() if n.endswith((".attn1", ".attn2"))]
    assert len(lora_layers(module.unet)) == 4 * len(attention)
    text = {n.rsplit(".", 1)[-1] for n in lora_layers(module.text_encoder)}
    assert text == {"q_proj", "k_proj", "v_proj", "out_proj"}
    layer = next(iter(lora_layers(module.unet).values()))
    assert layer.r["default"] == 2 and layer.scaling["default"] == pytest.approx(3.0 / 2)
    # The concept embedding wrapper is untouched by peft and still what the encoder reads.
    assert module.text_encoder.get_input_embeddings() is module.concept_tokens.embedding


@pytest.mark.parametrize("text_and_tokens", [False, True])
def test_only_the_intended_parameters_change(text_and_tokens: bool, tmp_path: Path) -> None:
    module, datamodule = build(train_text_encoder=text_and_tokens, train_tokens=text_and_tokens)
    state = module.state_dict()
    expected = {k for k in state if k.startswith("unet.") and ".lora_" in k}
    if text_and_tokens:
        expected |= {k for k in state if k.startswith("text_encoder.") and ".lora_" in k}
        expected.add(TOKEN_VECTORS)
    assert expected and module.trainable_state_keys() == expected
    groups = {"lora", "text_encoder_lora", "tokens"} if text_and_tokens else {"lora"}
    assert set(module.trainable_groups()) == groups
    assert_only_trainable_changed(module, datamodule, tmp_path, steps=3)
    assert {p.dtype for p in module.parameters() if p.requires_grad} == {torch.float32}


def test_resume_from_a_mid_epoch_checkpoint_is_exact(tmp_path: Path) -> None:
    options = {"train_text_encoder": True, "train_tokens": True}
    straight, datamodule = build(**options)
    tiny_trainer(tmp_path / "a", max_steps=4).fit(straight, datamodule=datamodule)

    first, datamodule = build(**options)
    every_two = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=2, save_top_k=-1)
    tiny_trainer(tmp_path / "b", max_steps=2, callbacks=[every_two]).fit(
        first, datamodule=datamodule
    )
    checkpoint = tmp_path / "ckpt" / "epoch=0-step=2.ckpt"
    saved = torch.load(checkpoint, weights_only=True)
    assert set(saved["state_dict"]) == first.trainable_state_keys()

    resumed, datamodule = build(**options)
    trainer = tiny_trainer(tmp_path / "c", max_steps=4)
    trainer.fit(resumed, datamodule=datamodule, ckpt_path=checkpoint)
    assert trainer.global_step == 4
    assert_resumed_matches(straight, first, resumed)


def test_adapters_stay_fp32_under_bf16_mixed(tmp_path: Path) -> None:
    module, datamodule = build(train_text_encoder=True)
    assert_trained_stay_fp32_under_bf16(module, datamodule, tmp_path, steps=1)


@pytest.mark.parametrize("rank", [0, -4])
def test_rank_below_one_is_refused_before_loading_anything(rank: int) -> None:
    with pytest.raises(ValueError, match="LoRA rank must be >= 1"):
        LoRA(concepts=[ConceptSpec("<v1>", "toy")], rank=rank, pretrained_model_name_or_path="x")
    with pytest.raises(ValueError, match="alpha must be > 0"):
        LoRA(concepts=[ConceptSpec("<v1>", "toy")], alpha=0.0, pretrained_model_name_or_path="x")


# ----- export ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[LoRA, Path, list[Path]]:
    """Random adapters (B nonzero) with alpha != rank, text-encoder LoRA and a random token."""
    module = LoRA(concepts=[ConceptSpec("<v1>", "toy")], rank=4, alpha=8.0, train_text_encoder=True)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if ".lora_" in name:
                param.copy_(0.3 * torch.randn(param.shape, generator=generator))
        vectors = module.concept_tokens.embedding.vectors
        vectors.copy_(torch.randn(vectors.shape, generator=generator))
    folder = tmp_path_factory.mktemp("lora-export")
    return module, folder, module.export(folder)


def test_export_files_and_keys(exported: tuple[LoRA, Path, list[Path]]) -> None:
    module, folder, written = exported
    assert written == [
        folder / LORA_WEIGHTS, folder / KOHYA_LORA, folder / "<v1>.safetensors",
        folder / A1111_FOLDER / "v1.safetensors",
    ]  # fmt: skip
    assert sorted(p.relative_to(folder) for p in folder.rglob("*.*")) == sorted(
        p.relative_to(folder) for p in written
    )
    with safe_open(str(folder / LORA_WEIGHTS), "pt") as weights:
        keys = set(weights.keys())
        assert "lora_adapter_metadata" in (weights.metadata() or {})
    trained = [n for n, p in module.named_parameters() if ".lora_" in n]
    assert len(keys) == len(trained)
    assert {k.split(".", 1)[0] for k in keys} == {"unet", "text_encoder"}


@pytest.mark.smoke
def test_export_loads_with_load_lora_weights_and_samples_the_same(
    exported: tuple[LoRA, Path, list[Path]], tiny_sd_path: Path
) -> None:
    module, folder, _ = exported
    ours = module_sample(module)
    plain = pipe_sample(fresh_pipe(tiny_sd_path))
    pipe = fresh_pipe(tiny_sd_path)
    pipe.load_lora_weights(folder, weight_name=LORA_WEIGHTS)
    pipe.load_textual_inversion(folder / "<v1>.safetensors")
    assert len(lora_layers(pipe.unet)) == len(lora_layers(module.unet))
    assert len(lora_layers(pipe.text_encoder)) == len(lora_layers(module.text_encoder))
    loaded = pipe_sample(pipe)
    assert torch.allclose(ours, loaded, atol=1e-4, rtol=0), (ours - loaded).abs().max()
    assert (ours - plain).abs().max() > 1e-2
    # The project's loader makes the same two calls: same adapters, same token row.
    again = fresh_pipe(tiny_sd_path)
    load_lora(again, folder)
    for name, value in pipe.unet.state_dict().items():
        assert torch.equal(again.unet.state_dict()[name], value), name
    ids = again.tokenizer.convert_tokens_to_ids(["<v1>"])
    row = again.text_encoder.get_input_embeddings().weight[ids].detach()
    assert torch.equal(row, module.concept_tokens.vectors_of(0).detach())


def test_the_adapters_matter(exported: tuple[LoRA, Path, list[Path]], tiny_sd_path: Path) -> None:
    """With the token alone (no LoRA), diffusers samples something else than the module."""
    module, folder, _ = exported
    pipe = fresh_pipe(tiny_sd_path)
    pipe.load_textual_inversion(folder / "<v1>.safetensors")
    assert (module_sample(module) - pipe_sample(pipe)).abs().max() > 1e-2


@pytest.mark.smoke
def test_kohya_file_loads_in_diffusers_and_samples_the_same(
    exported: tuple[LoRA, Path, list[Path]], tiny_sd_path: Path
) -> None:
    """kohya keys and alphas (alpha 8 != rank 4 here), as A1111 / ComfyUI / kohya read them."""
    module, folder, written = exported
    assert folder / KOHYA_LORA in written
    state = load_file(str(folder / KOHYA_LORA))
    assert {k.split("_", 2)[1] for k in state} == {"unet", "te"}
    alphas = [v for k, v in state.items() if k.endswith(".alpha")]
    downs = [k for k in state if k.endswith(".lora_down.weight")]
    assert len(alphas) == len(downs) == len(lora_layers(module.unet)) + len(
        lora_layers(module.text_encoder)
    )
    assert all(float(a) == 8.0 for a in alphas)
    pipe = fresh_pipe(tiny_sd_path)
    pipe.load_lora_weights(folder, weight_name=KOHYA_LORA)
    pipe.load_textual_inversion(folder / "<v1>.safetensors")
    ours, loaded = module_sample(module), pipe_sample(pipe)
    assert torch.allclose(ours, loaded, atol=1e-4, rtol=0), (ours - loaded).abs().max()
