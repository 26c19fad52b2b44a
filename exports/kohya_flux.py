"""A FLUX LoRA in kohya's sd-scripts layout, the one ComfyUI, Forge and sd-scripts read.

kohya names FLUX's layers as Black Forest Labs' original checkpoint does
(``lora_unet_double_blocks_0_img_attn_qkv``), where one linear layer holds what diffusers splits
in three or four: a double block's ``img_attn.qkv`` is diffusers' ``to_q`` / ``to_k`` / ``to_v``
stacked by rows, a single block's ``linear1`` is ``to_q`` / ``to_k`` / ``to_v`` / ``proj_mlp``.
The names and row orders are those of diffusers' single-file converter
(``convert_flux_transformer_checkpoint_to_diffusers``) and kohya reader
(``_convert_kohya_flux_lora_to_diffusers``), which the tests read the file back with.

Fusing: the parts' adapters become one adapter of the fused layer. Its down matrix is the
parts' down matrices stacked (its rank is the sum of theirs); its up matrix is block-diagonal,
each part's up matrix times that part's own alpha / rank; its alpha is its rank, so the file's
scale is 1. Restricted to one part's rows, up @ down is that part's own update, which is what a
client computes when it merges the fused layer. A part without an adapter (the single blocks'
``proj_mlp``, which diffusers' default targets leave out) gets zero rows, so its update is 0.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from exports.external_formats import kohya_lora_state

KOHYA_FLUX_UNET = "lora_unet"
KOHYA_FLUX_TEXT_PREFIXES = {"text_encoder": "lora_te1"}  # CLIP ViT-L, as sd-scripts' FLUX LoRA

# diffusers' layer (inside a block) -> kohya's, one to one.
_DOUBLE = {
    "attn.to_out.0": "img_attn_proj",
    "attn.to_add_out": "txt_attn_proj",
    "ff.net.0.proj": "img_mlp_0",
    "ff.net.2": "img_mlp_2",
    "ff_context.net.0.proj": "txt_mlp_0",
    "ff_context.net.2": "txt_mlp_2",
    "norm1.linear": "img_mod_lin",
    "norm1_context.linear": "txt_mod_lin",
}
_SINGLE = {"proj_out": "linear2", "norm.linear": "modulation_lin"}
# kohya's fused layer -> diffusers' layers, in the fused layer's row order.
_DOUBLE_FUSED = {
    "img_attn_qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "txt_attn_qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
}
_SINGLE_FUSED = {"linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")}
_OUTSIDE_BLOCKS = {
    "x_embedder": "img_in",
    "context_embedder": "txt_in",
    "proj_out": "final_layer_linear",
    "norm_out.linear": "final_layer_adaLN_modulation_1",
    "time_text_embed.timestep_embedder.linear_1": "time_in_in_layer",
    "time_text_embed.timestep_embedder.linear_2": "time_in_out_layer",
    "time_text_embed.text_embedder.linear_1": "vector_in_in_layer",
    "time_text_embed.text_embedder.linear_2": "vector_in_out_layer",
    "time_text_embed.guidance_embedder.linear_1": "guidance_in_in_layer",
    "time_text_embed.guidance_embedder.linear_2": "guidance_in_out_layer",
}
_BLOCK = re.compile(r"^(transformer_blocks|single_transformer_blocks)\.(\d+)\.(.+)$")
_KOHYA_BLOCK = {"transformer_blocks": "double_blocks", "single_transformer_blocks": "single_blocks"}


def _adapters(state: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """Each adapted layer's update factors: (down, up * alpha / rank), by diffusers' path."""
    paths = {key.rsplit(".", 2)[0] for key in state}
    factors: dict[str, torch.Tensor] = {}
    for path in paths:
        down = state[f"{path}.lora_A.weight"].detach().float().cpu()
        up = state[f"{path}.lora_B.weight"].detach().float().cpu()
        factors[path] = (down, up * (alpha / down.shape[0]))
    return factors


def _fused(
    parts: list[tuple[torch.Tensor, torch.Tensor] | None], rows: list[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """One adapter for layers stacked by rows: stacked downs, block-diagonal scaled ups."""
    present = [part for part in parts if part is not None]
    rank = sum(down.shape[0] for down, _ in present)
    down = torch.cat([down for down, _ in present])
    up = torch.zeros(sum(rows), rank)
    row = column = 0
    for part, height in zip(parts, rows):
        if part is not None:
            part_up = part[1]
            up[row : row + height, column : column + part_up.shape[1]] = part_up
            column += part_up.shape[1]
        row += height
    return down, up


def _entry(name: str, down: torch.Tensor, up: torch.Tensor) -> dict[str, torch.Tensor]:
    """kohya's three keys of one layer; the scale is folded into ``up`` (alpha = rank)."""
    return {
        f"{name}.lora_down.weight": down.contiguous(),
        f"{name}.lora_up.weight": up.contiguous(),
        f"{name}.alpha": torch.tensor(float(down.shape[0])),
    }


def _swap_halves(up: torch.Tensor) -> torch.Tensor:
    """diffusers' final norm emits (scale, shift), the original (shift, scale)."""
    scale, shift = up.chunk(2)
    return torch.cat([shift, scale])


def kohya_flux_transformer_state(
    state: dict[str, torch.Tensor], alpha: float, widths: dict[str, int]
) -> dict[str, torch.Tensor]:
    """The FLUX transformer's peft LoRA state (diffusers' paths) in kohya's FLUX layout.

    Args:
        state: ``<layer path>.lora_A.weight`` / ``.lora_B.weight`` of the transformer.
        alpha: the adapters' lora_alpha.
        widths: each linear layer's output width by path, for the rows of a fused layer's
            parts that have no adapter.
    """
    factors = _adapters(state, alpha)
    converted: dict[str, torch.Tensor] = {}
    fused_done: set[str] = set()
    for path in sorted(factors):
        down, up = factors[path]
        if path in _OUTSIDE_BLOCKS:
            up = _swap_halves(up) if path == "norm_out.linear" else up
            converted |= _entry(f"{KOHYA_FLUX_UNET}_{_OUTSIDE_BLOCKS[path]}", down, up)
            continue
        found = _BLOCK.match(path)
        if found is None:
            raise ValueError(f"no kohya FLUX name for transformer layer {path!r}")
        blocks, index, layer = found[1], found[2], found[3]
        prefix = f"{KOHYA_FLUX_UNET}_{_KOHYA_BLOCK[blocks]}_{index}"
        single = blocks == "single_transformer_blocks"
        plain, fused = (_SINGLE, _SINGLE_FUSED) if single else (_DOUBLE, _DOUBLE_FUSED)
        if layer in plain:
            converted |= _entry(f"{prefix}_{plain[layer]}", down, up)
            continue
        target = next((name for name, parts in fused.items() if layer in parts), None)
        if target is None:
            raise ValueError(f"no kohya FLUX name for transformer layer {path!r}")
        if f"{prefix}_{target}" in fused_done:
            continue
        fused_done.add(f"{prefix}_{target}")
        paths = [f"{blocks}.{index}.{part}" for part in fused[target]]
        fused_down, fused_up = _fused([factors.get(p) for p in paths], [widths[p] for p in paths])
        converted |= _entry(f"{prefix}_{target}", fused_down, fused_up)
    return converted


def kohya_flux_lora_state(
    peft_states: dict[str, dict[str, torch.Tensor]],
    alphas: dict[str, float],
    widths: dict[str, int],
) -> dict[str, torch.Tensor]:
    """The transformer's adapters (`kohya_flux_transformer_state`) and CLIP's
    (``lora_te1_text_model_...``, as sd-scripts writes them) in one kohya state dict."""
    converted = kohya_flux_transformer_state(
        peft_states["transformer"], alphas["transformer"], widths
    )
    text = {name: state for name, state in peft_states.items() if name != "transformer"}
    unknown = set(text) - set(KOHYA_FLUX_TEXT_PREFIXES)
    if unknown:
        raise ValueError(f"kohya's FLUX LoRA has no place for {sorted(unknown)}' adapters")
    if text:
        text_alphas = {name: alphas[name] for name in text}
        converted |= kohya_lora_state(text, text_alphas, KOHYA_FLUX_TEXT_PREFIXES)
    return converted


def linear_widths(model: nn.Module) -> dict[str, int]:
    """Each linear layer's output width by its path (peft's wrapped layers by their own)."""
    return {
        name.removesuffix(".base_layer"): module.out_features
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear)
    }


def write_kohya_flux_lora(
    peft_states: dict[str, dict[str, torch.Tensor]],
    alphas: dict[str, float],
    path: Path,
    transformer: nn.Module,
) -> Path:
    save_file(kohya_flux_lora_state(peft_states, alphas, linear_widths(transformer)), str(path))
    return path
