"""The concept in the formats other tools read: AUTOMATIC1111 / ComfyUI embeddings and
kohya-style LoRA files (A1111, ComfyUI, kohya's sd-scripts, InvokeAI).

- Embedding: ``{"emb_params": (num_vectors, dim)}`` in safetensors, the layout A1111 and
  ComfyUI read; those tools name the concept by the file name, so the file is the token with
  characters a file name cannot hold removed (``<v1>`` -> ``v1.safetensors``: "a photo of v1
  dog"). diffusers reads it with ``load_textual_inversion(path, token=...)``.
- LoRA: diffusers' own peft -> kohya key conversion (``convert_state_dict_to_kohya``), with
  each module's ``alpha`` set to the adapters' lora_alpha (the conversion writes alpha = rank,
  which is right only when alpha equals the rank).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from diffusers.utils.state_dict_utils import convert_state_dict_to_kohya
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


def kohya_lora_state(
    peft_states: dict[str, dict[str, torch.Tensor]], alpha: float | dict[str, float]
) -> dict[str, torch.Tensor]:
    """Kohya keys (``lora_unet_...``, ``lora_te1_...``) and alphas from peft state dicts.

    Args:
        peft_states: per component ("unet", "text_encoder"), its peft LoRA state dict.
        alpha: the adapters' lora_alpha: one value, or one per component (CLIF's stage 2
            keeps stage 1's text-encoder LoRA beside its own UNet LoRA).
    """
    alphas = alpha if isinstance(alpha, dict) else dict.fromkeys(peft_states, alpha)
    prefixed = {
        f"{component}.{key}": value.detach().float().cpu().contiguous()
        for component, state in peft_states.items()
        for key, value in state.items()
    }
    converted = convert_state_dict_to_kohya(prefixed)
    return {
        key: torch.tensor(float(alphas[_component_of(key)])) if key.endswith(".alpha") else value
        for key, value in converted.items()
    }


def _component_of(kohya_key: str) -> str:
    return "unet" if kohya_key.startswith("lora_unet_") else "text_encoder"


def write_kohya_lora(
    peft_states: dict[str, dict[str, torch.Tensor]], alpha: float | dict[str, float], path: Path
) -> Path:
    save_file(kohya_lora_state(peft_states, alpha), str(path))
    return path
