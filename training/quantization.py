"""The frozen denoiser's linear weights stored quantized (``memory.quantize_denoiser``), so a
12B FLUX transformer fits the cards people own: ``fp8`` (1 byte a weight, torchao's float8
weight-only tensors) or ``nf4`` (about 0.5, QLoRA's 4-bit NormalFloat with per-block scales,
torchao's NF4 tensors). Only weights that do not train are quantized: LoRA's adapters, and any
layer a baseline trains, stay as they are; under peft the adapted layer's frozen base is
quantized in place, so the adapter still adds its low-rank update to the quantized layer's
output. Each layer is dequantized for its own matmul, one at a time. torchao is an optional
dependency (``pip install '.[quantization]'``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

QUANTIZED_KINDS = ("fp8", "nf4")
NF4_BLOCK = 64  # QLoRA's block size for the 4-bit absmax scales


def torchao_quantization() -> Any:
    """torchao's quantization module, or a one-line error naming the extra."""
    try:
        import torchao.quantization as quantization
    except ImportError:
        raise ImportError(
            "memory.quantize_denoiser needs torchao, which is not installed: pip install "
            "'.[quantization]' (or torchao), or set memory.quantize_denoiser null."
        ) from None
    return quantization


class NF4Linear(nn.Module):
    """A frozen linear layer whose weight is a torchao NF4 tensor."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        quantization = torchao_quantization()
        weight = linear.weight.detach().to(torch.bfloat16)
        block = NF4_BLOCK if weight.numel() % NF4_BLOCK == 0 else weight.shape[-1]
        nf4 = quantization.to_nf4(weight, block, min(256, weight.numel() // block))
        self.weight = nn.Parameter(nf4, requires_grad=False)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach(), False)
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from torchao.quantization.quantize_.workflows.nf4.nf4_tensor import linear_nf4

        out = linear_nf4(x, self.weight)
        return out if self.bias is None else out + self.bias.to(out.dtype)


def frozen_linears(module: nn.Module) -> list[tuple[nn.Module, str, nn.Linear]]:
    """(parent, attribute, layer) of every plain linear layer whose weight does not train,
    LoRA's own matrices left out."""
    found = []
    for parent_name, parent in module.named_modules():
        for name, child in parent.named_children():
            path = f"{parent_name}.{name}"
            if type(child) is not nn.Linear or "lora_" in path:
                continue
            if not child.weight.requires_grad and not is_quantized(child.weight):
                found.append((parent, name, child))
    return found


def quantize_frozen_linears(module: nn.Module, kind: str) -> int:
    """Quantize ``module``'s frozen linear weights in place; returns how many layers."""
    if kind not in QUANTIZED_KINDS:
        raise ValueError(f"memory.quantize_denoiser must be one of {QUANTIZED_KINDS} or null.")
    quantization = torchao_quantization()
    layers = frozen_linears(module)
    for parent, name, linear in layers:
        if kind == "nf4":
            setattr(parent, name, NF4Linear(linear))
        else:  # torchao swaps the weight for a float8 tensor inside the same nn.Linear
            quantization.quantize_(linear, quantization.Float8WeightOnlyConfig())
    return len(layers)


def is_quantized(tensor: torch.Tensor) -> bool:
    """A weight held as a quantized tensor subclass (not cast to another dtype)."""
    data = tensor.data if isinstance(tensor, nn.Parameter) else tensor
    return type(data) is not torch.Tensor
