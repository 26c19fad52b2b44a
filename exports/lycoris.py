"""LoHa and LoKr adapters in LyCORIS's key names, the file ComfyUI, A1111 and kohya's
sd-scripts load (diffusers' ``load_lora_weights`` reads neither kind).

Layers are named as in the kohya LoRA file (exports/external_formats.py: ``lora_unet_...``,
SDXL's in the original layout, ``lora_te_...``); the weights keep peft's names, which are
LyCORIS's: LoHa ``hada_w1_a`` (out, r), ``hada_w1_b`` (r, in), ``hada_w2_a``, ``hada_w2_b``,
update (w1_a w1_b) * (w2_a w2_b) * alpha / r; LoKr ``lokr_w1`` (or ``lokr_w1_a`` / ``_b``) and
``lokr_w2`` (or ``lokr_w2_a`` / ``_b``), update kron(w1, w2) * scale. The clients take LoKr's
scale as alpha / r only when a factor is low-rank (r read from its ``_b``) and as 1 when both
are full matrices, while peft scales by alpha / r always: for full factors peft's scale is
folded into ``lokr_w1`` and no alpha is written.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from exports.external_formats import kohya_module_name, original_unet_path

LOHA_WEIGHTS = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")
LOKR_WEIGHTS = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b")


def _layers(state: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """peft's flat state by layer path: {path: {weight name: tensor}}."""
    layers: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        path, name = key.rsplit(".", 1)
        if name not in LOHA_WEIGHTS + LOKR_WEIGHTS:
            raise ValueError(f"{key!r} is neither a LoHa nor a LoKr weight")
        layers.setdefault(path, {})[name] = value.detach().float().cpu().contiguous()
    return layers


def lycoris_state(
    peft_states: dict[str, dict[str, torch.Tensor]],
    rank: int,
    alpha: float,
    prefixes: dict[str, str],
    unet_layers_per_block: int | None = None,
) -> dict[str, torch.Tensor]:
    """LyCORIS keys of peft LoHa / LoKr states by component ("unet", "text_encoder", ...)."""
    converted: dict[str, torch.Tensor] = {}
    for component, state in peft_states.items():
        for path, weights in _layers(state).items():
            if component == "unet" and unet_layers_per_block is not None:
                path = original_unet_path(path, unet_layers_per_block)
            name = kohya_module_name(component, path, prefixes)
            low_rank = any(k in weights for k in ("lokr_w1_b", "lokr_w2_b"))
            if "lokr_w1" in weights and "lokr_w2" in weights:  # both full: the scale folded in
                weights = {**weights, "lokr_w1": weights["lokr_w1"] * (alpha / rank)}
            elif low_rank or "hada_w1_a" in weights:
                converted[f"{name}.alpha"] = torch.tensor(float(alpha))
            converted |= {f"{name}.{key}": value for key, value in weights.items()}
    return converted


def write_lycoris(
    peft_states: dict[str, dict[str, torch.Tensor]],
    rank: int,
    alpha: float,
    path: Path,
    prefixes: dict[str, str],
    unet_layers_per_block: int | None = None,
) -> Path:
    save_file(lycoris_state(peft_states, rank, alpha, prefixes, unet_layers_per_block), str(path))
    return path
