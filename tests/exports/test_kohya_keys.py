"""The kohya LoRA file's keys against the patterns the clients match (not against our own
prefixes): ComfyUI's ``comfy/lora.py`` (``model_lora_keys_clip`` / ``model_lora_keys_unet``),
A1111's ``extensions-builtin/Lora/networks.py`` (``convert_diffusers_name_to_compvis``) and
kohya's sd-scripts ``networks/lora.py`` (prefix + transformers / diffusers module path)."""

from __future__ import annotations

import re

import pytest
import torch
from helpers import optimizer_with_lr, tiny_datamodule

from exports.external_formats import (
    SDXL_KOHYA_PREFIXES,
    kohya_lora_state,
    kohya_module_name,
)
from models import LoRA

pytestmark = pytest.mark.smoke  # every baseline, loss and export once

# ComfyUI, SD 1.x text encoder: "lora_te_text_model_encoder_layers_{b}_{LORA_CLIP_MAP[c]}"
# (and the SDXL-style "lora_te1_text_model_..." for clip_l), c in its LORA_CLIP_MAP.
COMFY_CLIP_PARTS = "|".join(
    ["mlp_fc1", "mlp_fc2", "self_attn_k_proj", "self_attn_q_proj", "self_attn_v_proj",
     "self_attn_out_proj"]
)  # fmt: skip
COMFY_SD1_TEXT = re.compile(rf"lora_te1?_text_model_encoder_layers_(\d+)_({COMFY_CLIP_PARTS})")
COMFY_SDXL_TEXT = re.compile(rf"lora_te[12]_text_model_encoder_layers_(\d+)_({COMFY_CLIP_PARTS})")
# A1111: diffusers-style names it converts to its compvis modules.
A1111_TEXT = re.compile(r"lora_te_text_model_encoder_layers_(\d+)_(.+)")
A1111_UNET = re.compile(
    r"lora_unet_(?:(?:down|up)_blocks_(\d+)_(?:attentions|resnets)_(\d+)|mid_block_"
    r"(?:attentions|resnets)_(\d+))_(.+)"
)


def kohya_reference_name(prefix: str, module_path: str) -> str:
    """sd-scripts: ``prefix + "." + module name`` with dots as underscores, the CLIP text
    model's names taken from ``text_model`` down (as transformers 4 named them)."""
    return f"{prefix}.{module_path}".replace(".", "_")


@pytest.fixture(scope="module")
def kohya_file() -> tuple[LoRA, dict[str, torch.Tensor]]:
    datamodule = tiny_datamodule()
    module = LoRA(
        concepts=datamodule.concepts,
        optimizer=optimizer_with_lr(1e-2),
        train_text_encoder=True,
        alpha=8.0,
    )
    return module, kohya_lora_state(module._peft_states(), 8.0)


def module_names(state: dict[str, torch.Tensor]) -> set[str]:
    return {key.split(".", 1)[0] for key in state}


def test_text_keys_are_the_ones_every_client_matches(
    kohya_file: tuple[LoRA, dict[str, torch.Tensor]],
) -> None:
    module, state = kohya_file
    text = {name for name in module_names(state) if name.startswith("lora_te")}
    layers = len(module.text_encoder.encoder.layers)
    expected = {
        kohya_reference_name("lora_te", f"text_model.encoder.layers.{i}.self_attn.{p}_proj")
        for i in range(layers)
        for p in ("q", "k", "v", "out")
    }
    assert text == expected
    for name in text:
        assert COMFY_SD1_TEXT.fullmatch(name), name
        assert A1111_TEXT.fullmatch(name), name


def test_unet_keys_are_diffusers_paths_the_clients_match(
    kohya_file: tuple[LoRA, dict[str, torch.Tensor]],
) -> None:
    module, state = kohya_file
    unet = {name for name in module_names(state) if name.startswith("lora_unet_")}
    # The UNet's own attention projections (peft keeps each as ``<path>.base_layer``).
    linear = {n.removesuffix(".base_layer") for n, m in module.unet.named_modules()
              if isinstance(m, torch.nn.Linear)}  # fmt: skip
    adapted = {n for n in linear if n.endswith(("to_q", "to_k", "to_v", "to_out.0"))}
    # ComfyUI's diffusers-name map and sd-scripts: "lora_unet_" + the module path.
    assert unet == {kohya_reference_name("lora_unet", path) for path in adapted}
    assert all(A1111_UNET.fullmatch(name) for name in unet)


def test_each_module_has_down_up_and_alpha(
    kohya_file: tuple[LoRA, dict[str, torch.Tensor]],
) -> None:
    _, state = kohya_file
    for name in module_names(state):
        down, up = state[f"{name}.lora_down.weight"], state[f"{name}.lora_up.weight"]
        assert down.shape[0] == up.shape[1] == 4  # rank 4 x in, out x rank 4
        assert float(state[f"{name}.alpha"]) == 8.0
    assert len(state) == 3 * len(module_names(state))


def test_sdxl_text_encoders_take_te1_and_te2() -> None:
    path = "encoder.layers.3.self_attn.q_proj"
    first = kohya_module_name("text_encoder", path, SDXL_KOHYA_PREFIXES)
    second = kohya_module_name("text_encoder_2", path, SDXL_KOHYA_PREFIXES)
    assert first == "lora_te1_text_model_encoder_layers_3_self_attn_q_proj"
    assert second == "lora_te2_text_model_encoder_layers_3_self_attn_q_proj"
    assert COMFY_SDXL_TEXT.fullmatch(first) and COMFY_SDXL_TEXT.fullmatch(second)
