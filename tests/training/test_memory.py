"""The memory switches on the tiny pipeline: what they change, and that training is the same."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention
from helpers import REPO_ROOT, tiny_datamodule, tiny_trainer

from callbacks import AttentionMaps, SampleImages, SemanticDrift
from core.concept import ConceptSpec
from datamodules.personalization import ConceptData
from losses.spl import SemanticPreservationLoss
from models import XTI, CustomDiffusion, DreamBooth, LoRA, TextualInversion, VisualEncoder
from models.base import PersonalizationModule
from step.draws import INSTANCE_SALT
from training.memory import MemorySettings

CONCEPTS = [ConceptSpec("<v1>", "toy")]
BASELINES: dict[str, Callable[..., PersonalizationModule]] = {
    "textual_inversion": TextualInversion,
    "custom_diffusion": CustomDiffusion,
    "dreambooth": DreamBooth,
    "lora": LoRA,
    "xti": XTI,
    "visual_encoder": VisualEncoder,
}
HAS_BITSANDBYTES = importlib.util.find_spec("bitsandbytes") is not None


def build(name: str, **memory: object) -> PersonalizationModule:
    torch.manual_seed(0)  # LoRA's and VisualEncoder's new weights: the same in every build
    return BASELINES[name](concepts=CONCEPTS, memory=MemorySettings(**memory))


def frozen_parameters(module: PersonalizationModule) -> list[torch.Tensor]:
    parts = module.frozen_components()
    return [p for part in parts for p in part.parameters() if not p.requires_grad]


@pytest.mark.parametrize("name", list(BASELINES))
def test_bf16_storage_trains_with_fp32_trained_weights(name: str, tmp_path: Path) -> None:
    # VisualEncoder trains across subjects sharing the token (two more synthetic ones).
    shared = {"shared_tokens": True, "additional_concepts": [ConceptData("<v1>")] * 2}
    datamodule = tiny_datamodule(**(shared if name == "visual_encoder" else {}))
    module = BASELINES[name](concepts=datamodule.concepts, memory=MemorySettings("bf16"))
    start = {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}
    trainer = tiny_trainer(tmp_path, max_steps=2, precision="bf16-mixed")
    trainer.fit(module, datamodule=datamodule)
    trained = {n: p for n, p in module.named_parameters() if p.requires_grad}
    assert trained.keys() == start.keys()
    assert all(p.dtype == torch.float32 for p in trained.values())
    assert all(not torch.equal(start[n], p) for n, p in trained.items())  # all of them moved
    frozen = frozen_parameters(module)
    assert frozen and all(p.dtype == torch.bfloat16 for p in frozen)
    if name == "visual_encoder":  # its 632M-parameter image encoder is one of them
        encoder = module.subject_encoder.image_encoder
        assert all(p.dtype == torch.bfloat16 for p in encoder.parameters())


def test_bf16_storage_with_a_regularizer_and_the_analysis_callbacks(tmp_path: Path) -> None:
    # Everything that calls the frozen components outside the step (a pipeline, t-SNE text
    # features, attention capture) runs under the same autocast.
    datamodule = tiny_datamodule()
    module = CustomDiffusion(
        concepts=datamodule.concepts, memory=MemorySettings("bf16"),
        regularizers=[SemanticPreservationLoss()],
    )  # fmt: skip
    callbacks = [
        SampleImages(every_n_steps=1, num_inference_steps=2),
        SemanticDrift(every_n_steps=2),
        AttentionMaps(every_n_steps=2, num_inference_steps=2),
    ]
    trainer = tiny_trainer(tmp_path, max_steps=2, precision="bf16-mixed", callbacks=callbacks)
    trainer.fit(module, datamodule=datamodule)
    images = module.generate(["a photo of a <v1> toy"], num_inference_steps=2)
    assert images.dtype == torch.float32 and torch.isfinite(images).all()


def test_half_storage_without_mixed_precision_is_an_error(tmp_path: Path) -> None:
    datamodule = tiny_datamodule()
    module = TextualInversion(concepts=datamodule.concepts, memory=MemorySettings("bf16"))
    with pytest.raises(ValueError, match="--trainer.precision bf16-mixed"):
        tiny_trainer(tmp_path, max_steps=1).fit(module, datamodule=datamodule)
    with pytest.raises(ValueError, match="frozen_dtype must be one of"):
        MemorySettings("fp8")


def one_step_gradients(module: PersonalizationModule) -> tuple[float, dict[str, torch.Tensor]]:
    batch = next(iter(tiny_datamodule().train_dataloader()))
    module.train()
    loss = module.compute_losses(batch, module.sample_draws(batch, 0, INSTANCE_SALT))["total"]
    loss.backward()
    grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.requires_grad}
    return loss.item(), grads


@pytest.mark.parametrize("name", ["custom_diffusion", "dreambooth", "lora"])
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain_loss, plain_grads = one_step_gradients(build(name))
    module = build(name, gradient_checkpointing=True)
    module.apply_memory_settings()
    calls = []
    original = torch.utils.checkpoint.checkpoint
    monkeypatch.setattr(
        torch.utils.checkpoint, "checkpoint", lambda *a, **k: calls.append(1) or original(*a, **k)
    )
    loss, grads = one_step_gradients(module)
    assert calls  # the blocks really went through checkpointing
    assert loss == pytest.approx(plain_loss, abs=1e-6)
    for key, grad in plain_grads.items():
        assert torch.allclose(grads[key], grad, atol=1e-6, rtol=1e-5), key


@pytest.mark.parametrize("name", list(BASELINES))
def test_every_attention_layer_runs_sdpa(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    module = build(name)
    if isinstance(module, VisualEncoder):  # its token's vectors come from photos
        module.set_subject(module.embed_subject(tiny_datamodule().images[0]))
    calls = []
    original = F.scaled_dot_product_attention

    def counted(*args: object, **kwargs: object) -> torch.Tensor:
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", counted)
    latents = torch.randn(1, 4, 16, 16)
    states = module.encode_text(["a photo of a <v1> toy"]).hidden_states
    calls.clear()  # count the UNet's calls only
    module.predict_noise(latents, torch.tensor([500]), states)
    layers = [m for m in module.unet.modules() if isinstance(m, Attention)]
    assert layers and len(calls) == len(layers)


@pytest.mark.skipif(not HAS_BITSANDBYTES, reason="bitsandbytes is not installed (low-memory)")
def test_adam_8bit_keeps_the_groups_and_trains(tmp_path: Path) -> None:
    import bitsandbytes as bnb

    datamodule = tiny_datamodule()
    module = CustomDiffusion(
        concepts=datamodule.concepts, memory=MemorySettings(adam_8bit=True),
        learning_rates={"tokens": 5e-3}, optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3),
    )  # fmt: skip
    start = {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}
    trainer = tiny_trainer(tmp_path, max_steps=2)
    trainer.fit(module, datamodule=datamodule)
    optimizer = trainer.optimizers[0]
    assert isinstance(optimizer, bnb.optim.AdamW8bit)
    lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
    assert lrs == {"tokens": 5e-3, "kv": 1e-3}
    moved = [not torch.equal(start[n], p) for n, p in module.named_parameters() if p.requires_grad]
    assert all(moved)


def test_adam_8bit_without_bitsandbytes_says_how(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    module = build("textual_inversion", adam_8bit=True)
    with pytest.raises(ImportError, match=r"pip install -e '\.\[low-memory\]'"):
        module.configure_optimizers()


@pytest.mark.slow
def test_compiled_unet_gives_the_same_loss_and_keeps_its_names() -> None:
    plain_loss, _ = one_step_gradients(build("custom_diffusion"))
    module = build("custom_diffusion", compile_unet=True, compile_backend="eager")
    keys = set(module.state_dict())
    module.apply_memory_settings()
    loss, _ = one_step_gradients(module)
    assert loss == pytest.approx(plain_loss, abs=1e-6)
    assert set(module.state_dict()) == keys  # checkpoints and exports see the same names


@pytest.mark.skipif(not HAS_BITSANDBYTES, reason="bitsandbytes is not installed (low-memory)")
def test_the_low_memory_overlay_trains_a_recipe(tmp_path: Path) -> None:
    from train import main

    cli = main([
        "fit", "--config", str(REPO_ROOT / "configs" / "custom_diffusion.yaml"),
        "--config", str(REPO_ROOT / "configs" / "tiny.yaml"),
        "--config", str(REPO_ROOT / "configs" / "low_memory.yaml"),
        "--trainer.max_steps", "2", "--trainer.default_root_dir", str(tmp_path),
        "--trainer.callbacks=[]", "--trainer.enable_checkpointing", "false",
    ])  # fmt: skip
    module = cli.model
    assert module.memory == MemorySettings("bf16", gradient_checkpointing=True, adam_8bit=True)
    assert module.unet.is_gradient_checkpointing
    assert type(cli.trainer.optimizers[0]).__name__ == "AdamW8bit"
    assert all(p.dtype == torch.bfloat16 for p in frozen_parameters(module))
