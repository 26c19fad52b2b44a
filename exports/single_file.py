"""A Stable Diffusion 1.x pipeline as one original-layout (LDM) checkpoint file, the
``model.safetensors`` AUTOMATIC1111 and ComfyUI load and diffusers reads with
``from_single_file``.

diffusers converts that layout to its own (``diffusers.loaders.single_file_utils``) but has no
library function for the way back, so the renaming is here: the UNet's blocks to
``input_blocks`` / ``middle_block`` / ``output_blocks`` (indices from ``layers_per_block``), the
VAE's to ``down`` / ``mid`` / ``up`` (its mid attention as 1x1 convolutions), and the CLIP text
model under ``cond_stage_model.transformer``. The test converts the result back with
diffusers' own loader and compares every tensor and the generated images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model.transformer."
SINGLE_FILE = "sd_checkpoint.safetensors"

# Inside a ResNet block (UNet, then VAE naming).
UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
VAE_RESNET = {"conv_shortcut": "nin_shortcut"}
VAE_ATTENTION = {
    "group_norm": "norm",
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "proj_out",
}
UNET_TOP = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}


def _rename_inside(rest: str, mapping: dict[str, str]) -> str:
    """Rename the first path component(s) of ``rest`` that ``mapping`` knows."""
    for old, new in mapping.items():
        if rest == old or rest.startswith(old + "."):
            return new + rest[len(old) :]
    return rest


def unet_key(key: str, layers_per_block: int, up_levels_with_attention: set[int]) -> str:
    """A diffusers UNet2DConditionModel key in LDM naming."""
    per_level = layers_per_block + 1
    for old, new in UNET_TOP.items():
        if key.startswith(old + "."):
            return new + key[len(old) :]
    parts = key.split(".")
    if parts[0] == "down_blocks":
        level, kind = int(parts[1]), parts[2]
        if kind == "downsamplers":  # down_blocks.i.downsamplers.0.conv.*
            return f"input_blocks.{(level + 1) * per_level}.0.op." + ".".join(parts[5:])
        index, rest = int(parts[3]), ".".join(parts[4:])
        block = f"input_blocks.{1 + level * per_level + index}"
        if kind == "resnets":
            return f"{block}.0.{_rename_inside(rest, UNET_RESNET)}"
        return f"{block}.1.{rest}"  # attentions
    if parts[0] == "mid_block":
        kind, index, rest = parts[1], int(parts[2]), ".".join(parts[3:])
        if kind == "resnets":
            return f"middle_block.{2 * index}.{_rename_inside(rest, UNET_RESNET)}"
        return f"middle_block.1.{rest}"
    if parts[0] == "up_blocks":
        level, kind = int(parts[1]), parts[2]
        if kind == "upsamplers":  # after the level's last resnet (and its attention, if any)
            slot = 2 if level in up_levels_with_attention else 1
            block = f"output_blocks.{level * per_level + layers_per_block}"
            return f"{block}.{slot}.conv." + ".".join(parts[5:])
        index, rest = int(parts[3]), ".".join(parts[4:])
        block = f"output_blocks.{level * per_level + index}"
        if kind == "resnets":
            return f"{block}.0.{_rename_inside(rest, UNET_RESNET)}"
        return f"{block}.1.{rest}"
    raise KeyError(key)


def unet_to_ldm(state: dict[str, torch.Tensor], config: Any) -> dict[str, torch.Tensor]:
    """The UNet's state dict in LDM naming (``config``: its diffusers config)."""
    layers = int(config.layers_per_block)
    with_attention = {
        int(k.split(".")[1]) for k in state if k.startswith("up_blocks.") and ".attentions." in k
    }
    return {UNET_PREFIX + unet_key(k, layers, with_attention): v for k, v in state.items()}


def vae_key(key: str, num_levels: int) -> str:
    """A diffusers AutoencoderKL key in LDM naming."""
    parts = key.split(".")
    side = parts[0]  # encoder / decoder / quant_conv / post_quant_conv
    if side not in ("encoder", "decoder"):
        return key
    rest = ".".join(parts[1:])
    if rest.startswith("conv_norm_out."):
        return f"{side}.norm_out." + rest[len("conv_norm_out.") :]
    inner = parts[1:]
    if inner[0] in ("down_blocks", "up_blocks"):
        level = int(inner[1])
        if inner[0] == "up_blocks":
            level = num_levels - 1 - level  # LDM numbers the decoder's levels bottom-up
        name = "down" if inner[0] == "down_blocks" else "up"
        if inner[2] in ("downsamplers", "upsamplers"):  # *.0.conv.*
            sampler = "downsample" if inner[2] == "downsamplers" else "upsample"
            return f"{side}.{name}.{level}.{sampler}." + ".".join(inner[4:])
        block_rest = _rename_inside(".".join(inner[4:]), VAE_RESNET)
        return f"{side}.{name}.{level}.block.{inner[3]}.{block_rest}"
    if inner[0] == "mid_block":
        if inner[1] == "resnets":
            block_rest = _rename_inside(".".join(inner[3:]), VAE_RESNET)
            return f"{side}.mid.block_{int(inner[2]) + 1}.{block_rest}"
        return f"{side}.mid.attn_1.{_rename_inside('.'.join(inner[3:]), VAE_ATTENTION)}"
    return key  # conv_in, conv_out


def vae_to_ldm(state: dict[str, torch.Tensor], config: Any) -> dict[str, torch.Tensor]:
    """The VAE's state dict in LDM naming; the mid attention's linear weights as 1x1 convs."""
    levels = len(config.block_out_channels)
    converted = {}
    for key, value in state.items():
        new = vae_key(key, levels)
        if ".mid.attn_1." in new and new.endswith(".weight") and value.ndim == 2:
            value = value[:, :, None, None]
        converted[VAE_PREFIX + new] = value
    return converted


def clip_key(key: str) -> str:
    """CLIPTextModel's key as the original checkpoints hold it (``text_model.`` first; recent
    transformers leave that prefix out of ``state_dict()``)."""
    return key if key.startswith("text_model.") else f"text_model.{key}"


def components_to_ldm(
    unet: Any, vae: Any, text_encoder: Any, vocab_size: int | None = None
) -> dict[str, torch.Tensor]:
    """UNet, VAE and CLIP text model of SD 1.x as one LDM-layout state dict (fp32, CPU).

    ``vocab_size``: keep only the first rows of the token embedding, the tokenizer's own
    vocabulary (a single file carries no tokenizer, so added concept tokens cannot be in it;
    their A1111 embedding files go with it).
    """
    text = {TEXT_PREFIX + clip_key(k): v for k, v in text_encoder.state_dict().items()}
    if vocab_size is not None:
        name = TEXT_PREFIX + "text_model.embeddings.token_embedding.weight"
        text[name] = text[name][:vocab_size]
    state = {
        **unet_to_ldm(unet.state_dict(), unet.config),
        **vae_to_ldm(vae.state_dict(), vae.config),
        **text,
    }
    return {k: v.detach().float().cpu().contiguous() for k, v in state.items()}


def write_single_file(
    path: Path, unet: Any, vae: Any, text_encoder: Any, vocab_size: int | None = None
) -> Path:
    """Write the components as one original-layout safetensors checkpoint."""
    save_file(components_to_ldm(unet, vae, text_encoder, vocab_size), str(path))
    return path


def check_single_file_family(wanted: bool, family: str) -> None:
    """The single file is SD 1.x's original layout: refuse it on another family at start."""
    if wanted and family != "sd1":
        raise ValueError(
            "export_single_file writes SD 1.x's original checkpoint layout; leave it off on "
            f"the {family} backbone (its export folder loads in diffusers as it is)."
        )
