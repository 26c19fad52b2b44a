"""peft LoRA adapters as the project adds and saves them (LoRA, CLIF's two stages).

Gaussian A and zero B (diffusers' recipe), so training starts from the unchanged model; the
export is diffusers' key format with the adapters' peft config as metadata, so an alpha other
than the rank survives ``pipe.load_lora_weights``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers.utils import convert_state_dict_to_diffusers
from peft import LoHaConfig, LoKrConfig, LoraConfig
from peft.config import PeftConfig
from peft.utils import get_peft_model_state_dict
from torch import nn

LORA_WEIGHTS = "pytorch_lora_weights.safetensors"
# The adapter kinds the LoRA baseline trains (peft's tuners): LoRA, DoRA (LoRA with a learned
# magnitude per output, Liu et al. 2024), LoHa (Hadamard product of two low-rank pairs) and
# LoKr (Kronecker product), the last two as LyCORIS defines them.
ADAPTER_KINDS = ("lora", "dora", "loha", "lokr")
# Name pieces of the trained adapter weights, any kind.
ADAPTER_PARAMETER_MARKS = ("lora_", "hada_", "lokr_")
TEXT_ENCODER_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")


def check_lora_options(rank: int, alpha: float | None) -> float:
    """alpha as used (None: alpha = rank, as diffusers' DreamBooth-LoRA script sets it)."""
    if rank < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {rank}; the recipe uses rank: 4.")
    if alpha is not None and alpha <= 0:
        raise ValueError(f"LoRA alpha must be > 0 (or null for alpha = rank), got {alpha}.")
    return float(alpha if alpha is not None else rank)


def check_adapter_kind(kind: str) -> None:
    if kind not in ADAPTER_KINDS:
        raise ValueError(f"adapter must be one of {', '.join(ADAPTER_KINDS)}, got {kind!r}.")


def lora_config(
    rank: int,
    alpha: float,
    targets: tuple[str, ...],
    kind: str = "lora",
    init: bool | str = "gaussian",
) -> PeftConfig:
    """peft's config of one adapter kind; each starts from the unchanged model (LoRA's and
    DoRA's B, LoHa's second pair's and LoKr's second factor's weights are zero). ``init``:
    LoRA's A, ``gaussian`` (std 1 / r, diffusers' scripts) or True (peft's Kaiming-uniform, the
    original LoRA's and Mix-of-Show's)."""
    if kind == "loha":
        return LoHaConfig(r=rank, alpha=alpha, target_modules=list(targets), init_weights=True)
    if kind == "lokr":
        return LoKrConfig(r=rank, alpha=alpha, target_modules=list(targets), init_weights=True)
    return LoraConfig(
        r=rank, lora_alpha=alpha, init_lora_weights=init, target_modules=list(targets),
        use_dora=kind == "dora",
    )  # fmt: skip


def add_seeded_adapters(
    targets: list[tuple[nn.Module, tuple[str, ...]]],
    rank: int,
    alpha: float,
    seed: int,
    kind: str = "lora",
    init: bool | str = "gaussian",
) -> None:
    """A LoRA on each (module, target layers), in order. A's random init comes from `seed`,
    not the global RNG: the same config starts from the same adapters (and a resumed run
    continues the run it came from)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module, layers in targets:
            module.add_adapter(lora_config(rank, alpha, layers, kind, init))


def lora_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The module's trainable LoRA weights."""
    return [
        p
        for name, p in module.named_parameters()
        if any(mark in name for mark in ADAPTER_PARAMETER_MARKS) and p.requires_grad
    ]


def has_adapters(module: nn.Module) -> bool:
    return bool(getattr(module, "peft_config", None))


def peft_state(module: nn.Module) -> dict[str, Any]:
    # save_embedding_layers=False: nothing of ours targets embeddings, and "auto" would look
    # the base model up on the hub to compare vocabulary sizes.
    return get_peft_model_state_dict(module, save_embedding_layers=False)


def diffusers_layers(state: dict[str, Any]) -> dict[str, Any]:
    return convert_state_dict_to_diffusers(
        {k: v.detach().float().contiguous() for k, v in state.items()}
    )


def save_lora_layers(
    folder: Path, components: dict[str, nn.Module], writer_name: str = "StableDiffusionPipeline"
) -> Path:
    """``pytorch_lora_weights.safetensors`` of the adapted components ({"unet": ...,
    "text_encoder": ..., "text_encoder_2": ...}; FLUX: "transformer"), through the family's
    pipeline's own writer (``writer_name``: SDXL's keys name both text encoders)."""
    layers: dict[str, Any] = {}
    for name, module in components.items():
        layers[f"{name}_lora_layers"] = diffusers_layers(peft_state(module))
        layers[f"{name}_lora_adapter_metadata"] = module.peft_config["default"].to_dict()
    import diffusers  # the pipeline modules load when a run exports

    writer = getattr(diffusers, writer_name)
    writer.save_lora_weights(folder, weight_name=LORA_WEIGHTS, safe_serialization=True, **layers)
    return folder / LORA_WEIGHTS
