"""``memory.quantize_denoiser``: the frozen transformer's linear weights stored in fp8 / NF4
(torchao), LoRA's adapters untouched and still training; the stored bytes shrink as the
formats say; a missing torchao is one line naming the extra."""

from __future__ import annotations

import builtins
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from core.concept import ConceptSpec
from models import LoRA
from training.memory import MemorySettings
from training.quantization import frozen_linears, is_quantized, quantize_frozen_linears

pytest.importorskip("torchao", reason="the quantization extra is not installed")
pytestmark = pytest.mark.smoke  # CI's newest-versions venv has the extra
BATCH = {"pixel_values": torch.linspace(-1, 1, 2 * 3 * 32 * 32).reshape(2, 3, 32, 32),
         "prompts": ["a photo of a <v1> dog"] * 2, "sample_key": [1, 2]}  # fmt: skip


def lora(kind: str | None, tiny_flux_path: Path) -> LoRA:
    module = LoRA(
        pretrained_model_name_or_path="tiny-flux", concepts=[ConceptSpec("<v1>", "dog")],
        memory=MemorySettings(quantize_denoiser=kind),
    )  # fmt: skip
    module.apply_memory_settings()
    return module


def linear_weight_bytes(module: nn.Module) -> int:
    """Bytes of the denoiser's frozen linear weights as stored (quantized ones by their
    parts: codes and scales)."""
    total = 0
    for name, param in module.named_parameters():
        if "lora_" in name or not name.endswith("weight") or param.dim() != 2:
            continue
        data = param.data
        if is_quantized(data):
            parts = [getattr(data, attr) for attr in data.__tensor_flatten__()[0]]
            total += sum(p.numel() * p.element_size() for p in parts)
        else:
            total += data.numel() * data.element_size()
    return total


@pytest.mark.parametrize(("kind", "most_bytes"), [("fp8", 0.3), ("nf4", 0.2)])
def test_frozen_weights_are_stored_quantized_and_lora_still_trains(
    kind: str, most_bytes: float, tiny_flux_path: Path
) -> None:
    plain, quantized = lora(None, tiny_flux_path), lora(kind, tiny_flux_path)
    assert not frozen_linears(quantized.unet)  # every frozen linear weight is quantized
    ratio = linear_weight_bytes(quantized.unet) / linear_weight_bytes(plain.unet)
    assert ratio <= most_bytes  # fp8: 1 byte of fp32's 4 (+ scales); nf4: 0.5 (+ scales)
    adapters = {n: p for n, p in quantized.named_parameters() if p.requires_grad}
    assert adapters and all("lora_" in n for n in adapters)
    assert all(p.dtype == torch.float32 and not is_quantized(p) for p in adapters.values())
    draws = quantized.sample_draws(BATCH, 0)
    loss = quantized.denoising_loss(quantized.denoise(BATCH, draws, with_prior=False))
    reference = plain.denoising_loss(plain.denoise(BATCH, plain.sample_draws(BATCH, 0)))
    loss.backward()
    assert all(p.grad is not None for p in adapters.values())
    ups = [p for n, p in adapters.items() if "lora_B" in n]  # B starts at 0, so A's grad is 0
    assert ups and all(p.grad.abs().sum() > 0 for p in ups)
    assert loss.item() == pytest.approx(reference.item(), rel=0.05)  # the same model, rounded


def test_quantizing_keeps_trained_layers() -> None:
    model = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 64))
    model[0].requires_grad_(False)
    assert quantize_frozen_linears(model, "nf4") == 1
    assert type(model[1]) is nn.Linear and model[1].weight.requires_grad


def test_a_missing_torchao_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def without_torchao(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.startswith("torchao"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_torchao)
    with pytest.raises(ImportError, match=r"pip install '\.\[quantization\]'"):
        quantize_frozen_linears(nn.Sequential(nn.Linear(4, 4).requires_grad_(False)), "nf4")
