"""Memory switches every baseline and regularizer honours (``model.init_args.memory``).

SD 1.5 at 512 px has to fit the 8-24 GB cards the field trains on. Six switches, each
independent, measured by ``scripts/benchmark_memory.py``:

- ``frozen_dtype: bf16 | fp16``: the weights that do not train are *stored* in half precision
  (the trained ones stay fp32, so the optimizer and its state stay exact). Needs a mixed
  precision trainer (``--trainer.precision bf16-mixed``): autocast runs each op in half while
  the trained fp32 weights join in. Every call of the frozen components (generation, the
  callbacks, the regularizers) runs under that autocast too (`autocast_calls`).
- ``gradient_checkpointing``: the UNet (and a text encoder that trains) recompute activations
  in the backward pass instead of keeping them (diffusers' and transformers' own switches).
- ``adam_8bit``: the configured AdamW becomes bitsandbytes' ``AdamW8bit`` with the same groups,
  learning rates, betas, eps and weight decay (the optimizer state in 8 bits).
- ``compile_unet``: ``torch.compile`` of the UNet in place (state-dict names unchanged, so
  checkpoints and exports are as without).
- ``quantize_denoiser: fp8 | nf4``: the denoiser's frozen linear weights stored quantized
  (training/quantization.py, torchao); what FLUX's 12B transformer needs on a 12-16 GB card.
- ``cache_text``: where nothing in the text path trains, each prompt is encoded once and the
  text encoders stay on the CPU (models/text/text_cache.py; FLUX's T5-XXL is 9.5 GB).

Attention is always SDPA (``F.scaled_dot_product_attention``, diffusers' ``AttnProcessor2_0``
and its Custom Diffusion / XTI counterparts): PyTorch picks its flash or memory-efficient kernel
where the GPU has one; tests/training/test_memory.py checks every attention layer of
every baseline calls it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from training.quantization import QUANTIZED_KINDS, is_quantized

HALF_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
BITSANDBYTES_MISSING = (
    "memory.adam_8bit needs bitsandbytes: pip install -e '.[low-memory]' (or set "
    "memory.adam_8bit false)"
)


@dataclass(frozen=True)
class MemorySettings:
    """The switches (all off by default: the plain fp32 module)."""

    frozen_dtype: str | None = None
    gradient_checkpointing: bool = False
    adam_8bit: bool = False
    compile_unet: bool = False
    compile_backend: str = "inductor"
    quantize_denoiser: str | None = None
    cache_text: bool = False

    def __post_init__(self) -> None:
        if self.quantize_denoiser is not None and self.quantize_denoiser not in QUANTIZED_KINDS:
            raise ValueError(
                f"memory.quantize_denoiser must be one of {', '.join(QUANTIZED_KINDS)} or null "
                f"(not quantized), got {self.quantize_denoiser!r}."
            )
        if self.frozen_dtype is not None and self.frozen_dtype not in HALF_DTYPES:
            raise ValueError(
                f"memory.frozen_dtype must be one of {sorted(HALF_DTYPES)} or null (fp32), "
                f"got {self.frozen_dtype!r}."
            )

    @property
    def half(self) -> torch.dtype | None:
        return HALF_DTYPES.get(self.frozen_dtype) if self.frozen_dtype else None


def store_frozen_in(modules: Iterable[nn.Module], dtype: torch.dtype) -> int:
    """Cast every frozen floating-point parameter and buffer of `modules` to `dtype` in place
    (trained parameters are left fp32); returns the bytes this frees."""
    freed = 0
    for module in modules:
        tensors = [p for p in module.parameters() if not p.requires_grad]
        tensors += list(module.buffers())
        for tensor in tensors:
            if is_quantized(tensor):  # memory.quantize_denoiser's: casting would dequantize
                continue
            if tensor.is_floating_point() and tensor.dtype != dtype:
                before = tensor.element_size() * tensor.numel()
                tensor.data = tensor.data.to(dtype)
                freed += before - tensor.element_size() * tensor.numel()
    return freed


def check_mixed_precision(settings: MemorySettings, precision: str) -> None:
    """Half-stored frozen weights need autocast, which only a ``*-mixed`` trainer runs."""
    if settings.frozen_dtype and not str(precision).endswith("-mixed"):
        wanted = "bf16-mixed" if settings.frozen_dtype == "bf16" else "16-mixed"
        raise ValueError(
            f"memory.frozen_dtype {settings.frozen_dtype} stores the frozen weights in half "
            f"precision, which needs autocast; the trainer runs {precision!r}: set "
            f"--trainer.precision {wanted} (or memory.frozen_dtype null)."
        )


def enable_gradient_checkpointing(unet: nn.Module, *text_encoders: nn.Module) -> None:
    """Recompute UNet activations in backward; a text encoder's too where it trains (in
    train mode: transformers checkpoints only then)."""
    unet.enable_gradient_checkpointing()
    for text_encoder in text_encoders:
        if any(p.requires_grad for p in text_encoder.parameters()):
            text_encoder.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )


def adam_8bit(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The same groups and hyper-parameters in bitsandbytes' AdamW8bit (AdamW or Adam only:
    another optimizer's update rule would silently change)."""
    if type(optimizer) not in (torch.optim.AdamW, torch.optim.Adam):
        raise ValueError(
            f"memory.adam_8bit replaces AdamW with its 8-bit version, but the optimizer is "
            f"{type(optimizer).__name__}; use torch.optim.AdamW or set memory.adam_8bit false."
        )
    try:
        import bitsandbytes as bnb
    except ImportError:
        raise ImportError(BITSANDBYTES_MISSING) from None
    defaults = optimizer.defaults
    weight_decay = defaults["weight_decay"] if isinstance(optimizer, torch.optim.AdamW) else 0.0
    groups = [{k: v for k, v in g.items() if k in ("params", "lr", "name")}
              for g in optimizer.param_groups]  # fmt: skip
    return bnb.optim.AdamW8bit(
        groups, lr=defaults["lr"], betas=defaults["betas"], eps=defaults["eps"],
        weight_decay=weight_decay,
    )  # fmt: skip


def autocast_calls(modules: Iterable[nn.Module], dtype: torch.dtype) -> None:
    """Every call of these modules runs under autocast to `dtype` on their device, whoever
    calls them (the step, a pipeline, a callback, a regularizer): half-stored frozen weights
    then meet fp32 inputs and trained fp32 weights without a dtype error. Hooks on the
    modules themselves, so nothing else has to know; nested autocast of one dtype is a no-op."""
    for module in modules:
        stack: list[torch.autocast] = []

        def enter(mod: nn.Module, args: Any, stack: list[torch.autocast] = stack) -> None:
            device = next(mod.parameters()).device.type
            context = torch.autocast(device_type=device, dtype=dtype)
            context.__enter__()
            stack.append(context)

        def leave(mod: nn.Module, args: Any, out: Any, stack: list[torch.autocast] = stack) -> None:
            stack.pop().__exit__(None, None, None)

        module.register_forward_pre_hook(enter)
        module.register_forward_hook(leave, always_call=True)
