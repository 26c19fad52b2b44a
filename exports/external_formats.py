"""The concept in the formats other tools read: AUTOMATIC1111 / ComfyUI embeddings and
kohya-style LoRA files (A1111, ComfyUI, kohya's sd-scripts, InvokeAI).

- Embedding: ``{"emb_params": (num_vectors, dim)}`` in safetensors, the layout A1111 and
  ComfyUI read; those tools name the concept by the file name, so the file is the token with
  characters a file name cannot hold removed (``<v1>`` -> ``v1.safetensors``: "a photo of v1
  dog"). diffusers reads it with ``load_textual_inversion(path, token=...)``.
- LoRA: kohya's key names, the ones ComfyUI (``comfy/lora.py``), A1111
  (``extensions-builtin/Lora``) and kohya's sd-scripts (``networks/lora.py``) match: the UNet's
  diffusers module path after ``lora_unet_`` and the text encoder's transformers path, *with*
  its ``text_model`` level, after ``lora_te_`` (SD 1.x; SDXL's two encoders ``lora_te1_`` and
  ``lora_te2_``), dots as underscores; ``lora_down`` / ``lora_up`` and each module's ``alpha``
  (the adapters' lora_alpha). A key those tools do not know is dropped by them with a log line
  at most, so the names are written here rather than by diffusers' ``convert_state_dict_to_kohya``
  (which names transformers 5's flattened CLIP ``lora_te1_encoder_...``: matched by none).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

A1111_FOLDER = "a1111"
A1111_KEY = "emb_params"
KOHYA_LORA = "kohya_lora.safetensors"


def a1111_name(token: str) -> str:
    """The file stem A1111 / ComfyUI will know the concept by (the prompt word)."""
    stem = re.sub(r"[^\w.-]+", "", token).strip(".")
    return stem or "concept"


def write_a1111_embedding(vectors: torch.Tensor, folder: Path, token: str) -> Path:
    """``vectors`` (num_vectors, dim) as ``folder/a1111/<name>.safetensors``, the A1111 /
    ComfyUI embedding file of ``token``."""
    path = folder / A1111_FOLDER / f"{a1111_name(token)}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({A1111_KEY: vectors.detach().float().cpu().contiguous()}, str(path))
    return path


# SDXL embeddings (A1111, ComfyUI): one file per token with each encoder's vectors by name;
# FLUX's as diffusers' advanced FLUX script writes them (CLIP ViT-L's and T5's).
SDXL_EMBEDDING_KEYS = ("clip_l", "clip_g")
FLUX_EMBEDDING_KEYS = ("clip_l", "t5")


def write_sdxl_embedding(
    vectors: list[torch.Tensor], path: Path, token: str, keys: tuple[str, ...] = SDXL_EMBEDDING_KEYS
) -> Path:
    """Two encoders' vectors (num_vectors, dim_k) as one file, ``{"clip_l": ..., "clip_g":
    ...}`` as A1111 and ComfyUI read for SDXL (``keys``: FLUX's ``clip_l`` / ``t5``); the token
    goes in the file's metadata (the clients name an embedding by its file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {key: v.detach().float().cpu().contiguous() for key, v in zip(keys, vectors)}
    save_file(state, str(path), metadata={"token": token})
    return path


def load_embedding(pipeline: Any, path: Path) -> None:
    """One embedding file into a diffusers pipeline: an SD 1.x ``{token: vectors}`` file
    through ``load_textual_inversion``; an SDXL ``clip_l`` / ``clip_g`` file into each of the
    two encoders (diffusers reads one encoder per call)."""
    with safe_open(str(path), framework="pt") as handle:
        keys, metadata = set(handle.keys()), handle.metadata() or {}
        state = {key: handle.get_tensor(key) for key in keys}
    names = next((k for k in (SDXL_EMBEDDING_KEYS, FLUX_EMBEDDING_KEYS) if set(k) <= keys), None)
    if names is None:
        pipeline.load_textual_inversion(path)
        return
    flux = getattr(pipeline, "transformer", None) is not None
    if getattr(pipeline, "text_encoder_2", None) is None or flux != (names == FLUX_EMBEDDING_KEYS):
        kind = "a FLUX" if names == FLUX_EMBEDDING_KEYS else "an SDXL"
        raise ValueError(
            f"{path} is {kind} embedding ({', '.join(names)}); load it into {kind} pipeline."
        )
    token = metadata.get("token") or path.stem
    pairs = (
        (pipeline.text_encoder, pipeline.tokenizer),
        (pipeline.text_encoder_2, pipeline.tokenizer_2),
    )
    for key, (encoder, tokenizer) in zip(names, pairs):
        pipeline.load_textual_inversion(
            state[key], token=token, text_encoder=encoder, tokenizer=tokenizer
        )


# kohya's prefix of each component (SD 1.x's one text encoder is ``lora_te``; SDXL's
# ``text_encoder`` / ``text_encoder_2`` take ``lora_te1`` / ``lora_te2``).
KOHYA_PREFIXES = {"unet": "lora_unet", "text_encoder": "lora_te", "text_encoder_2": "lora_te2"}
SDXL_KOHYA_PREFIXES = {**KOHYA_PREFIXES, "text_encoder": "lora_te1"}
# peft's names of the two LoRA matrices -> kohya's.
_KOHYA_MATRICES = {"lora_A": "lora_down", "lora_B": "lora_up"}
_TEXT_MODEL = "text_model."


_DOWN_ATTENTION = re.compile(r"^down_blocks\.(\d+)\.attentions\.(\d+)\.(.+)$")
_UP_ATTENTION = re.compile(r"^up_blocks\.(\d+)\.attentions\.(\d+)\.(.+)$")
_MID_ATTENTION = re.compile(r"^mid_block\.attentions\.0\.(.+)$")


def original_unet_path(path: str, layers_per_block: int) -> str:
    """A diffusers UNet attention path in the original (LDM / SGM) layout, which SDXL's
    checkpoints, kohya's sd-scripts and A1111 name SDXL LoRA layers by.

    Each down level holds ``layers_per_block`` blocks and a downsampler (``input_blocks.0`` is
    the input convolution), each up level ``layers_per_block + 1`` blocks; a block's attention
    is its part 1: ``down_blocks.1.attentions.0`` is ``input_blocks.4.1`` in SDXL."""
    found = _DOWN_ATTENTION.match(path)
    if found:
        index = 1 + int(found[1]) * (layers_per_block + 1) + int(found[2])
        return f"input_blocks.{index}.1.{found[3]}"
    found = _UP_ATTENTION.match(path)
    if found:
        index = int(found[1]) * (layers_per_block + 1) + int(found[2])
        return f"output_blocks.{index}.1.{found[3]}"
    found = _MID_ATTENTION.match(path)
    if found:
        return f"middle_block.1.{found[1]}"
    raise ValueError(f"no original-layout name for UNet path {path!r} (an attention layer?)")


def kohya_module_name(component: str, module_path: str, prefixes: dict[str, str]) -> str:
    """kohya's name of one adapted layer: ``lora_te_text_model_encoder_layers_0_self_attn_k_proj``.

    The text encoders' paths are written from CLIP's ``text_model`` level, which transformers 5
    no longer has in its module tree but the clients' patterns still hold."""
    if component != "unet" and not module_path.startswith(_TEXT_MODEL):
        module_path = _TEXT_MODEL + module_path
    return f"{prefixes[component]}_{module_path.replace('.', '_')}"


def kohya_lora_state(
    peft_states: dict[str, dict[str, torch.Tensor]],
    alpha: float | dict[str, float],
    prefixes: dict[str, str] = KOHYA_PREFIXES,
    unet_layers_per_block: int | None = None,
) -> dict[str, torch.Tensor]:
    """Kohya keys (``lora_unet_...``, ``lora_te_text_model_...``) and alphas from peft state dicts.

    Args:
        peft_states: per component ("unet", "text_encoder"), its peft LoRA state dict
            (``<module path>.lora_A.weight`` / ``.lora_B.weight``).
        alpha: the adapters' lora_alpha: one value, or one per component (CLIF's stage 2
            keeps stage 1's text-encoder LoRA beside its own UNet LoRA).
        prefixes: kohya's prefix per component (``SDXL_KOHYA_PREFIXES`` for SDXL).
        unet_layers_per_block: given (SDXL), the UNet's layers are named in the original
            layout (`original_unet_path`), as SDXL's kohya LoRAs are; SD 1.x's keep
            diffusers' paths, which the clients convert themselves.
    """
    alphas = alpha if isinstance(alpha, dict) else dict.fromkeys(peft_states, alpha)
    converted: dict[str, torch.Tensor] = {}
    for component, state in peft_states.items():
        for key, value in state.items():
            module_path, matrix, suffix = key.rsplit(".", 2)
            if component == "unet" and unet_layers_per_block is not None:
                module_path = original_unet_path(module_path, unet_layers_per_block)
            name = kohya_module_name(component, module_path, prefixes)
            converted[f"{name}.{_KOHYA_MATRICES[matrix]}.{suffix}"] = (
                value.detach().float().cpu().contiguous()
            )
            converted[f"{name}.alpha"] = torch.tensor(float(alphas[component]))
    return converted


def write_kohya_lora(
    peft_states: dict[str, dict[str, torch.Tensor]],
    alpha: float | dict[str, float],
    path: Path,
    prefixes: dict[str, str] = KOHYA_PREFIXES,
    unet_layers_per_block: int | None = None,
) -> Path:
    save_file(kohya_lora_state(peft_states, alpha, prefixes, unet_layers_per_block), str(path))
    return path
