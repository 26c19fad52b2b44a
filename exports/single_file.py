"""A Stable Diffusion 1.x or SDXL pipeline as one original-layout checkpoint file, the
``model.safetensors`` AUTOMATIC1111 and ComfyUI load and diffusers reads with
``from_single_file``.

SDXL's original (SGM) layout names the UNet as SD 1.x's does plus its added embedding
(``label_emb.0``), the VAE the same, and its two text encoders as conditioner embedders:
CLIP ViT-L under ``conditioner.embedders.0.transformer.`` in transformers' own names, and
OpenCLIP ViT-bigG under ``conditioner.embedders.1.model.`` in OpenCLIP's (``resblocks``, fused
``in_proj`` attention, ``ln_final``, a ``text_projection`` matrix applied as ``x @ P``).

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
SDXL_TEXT_PREFIXES = ("conditioner.embedders.0.transformer.", "conditioner.embedders.1.model.")
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
    "add_embedding.linear_1": "label_emb.0.0",  # SDXL's pooled-text and size embedding
    "add_embedding.linear_2": "label_emb.0.2",
}
# OpenCLIP's names inside one residual block of its text transformer.
OPEN_CLIP_BLOCK = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
    "self_attn.out_proj": "attn.out_proj",
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


def open_clip_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A CLIPTextModelWithProjection's state dict in OpenCLIP's text-tower names (q, k, v
    fused into ``in_proj``; the projection as the matrix OpenCLIP multiplies from the right)."""
    state = {clip_key(k) if k != "text_projection.weight" else k: v for k, v in state.items()}
    out: dict[str, torch.Tensor] = {
        "token_embedding.weight": state["text_model.embeddings.token_embedding.weight"],
        "positional_embedding": state["text_model.embeddings.position_embedding.weight"],
        "ln_final.weight": state["text_model.final_layer_norm.weight"],
        "ln_final.bias": state["text_model.final_layer_norm.bias"],
        "text_projection": state["text_projection.weight"].T,
    }
    prefix = "text_model.encoder.layers."
    layers = sorted({int(k[len(prefix) :].split(".")[0]) for k in state if k.startswith(prefix)})
    for index in layers:
        ours, theirs = f"{prefix}{index}.", f"transformer.resblocks.{index}."
        for kind in ("weight", "bias"):
            qkv = [state[f"{ours}self_attn.{p}_proj.{kind}"] for p in ("q", "k", "v")]
            out[f"{theirs}attn.in_proj_{kind}"] = torch.cat(qkv)
            for old, new in OPEN_CLIP_BLOCK.items():
                out[f"{theirs}{new}.{kind}"] = state[f"{ours}{old}.{kind}"]
    return out


def _trimmed(state: dict[str, torch.Tensor], key: str, rows: int | None) -> dict[str, torch.Tensor]:
    if rows is not None:
        state[key] = state[key][:rows]
    return state


def text_encoders_to_ldm(
    text_encoders: list[Any], vocab_size: int | None
) -> dict[str, torch.Tensor]:
    """SD 1.x's one CLIP text model, or SDXL's two, under the original layout's names."""
    if len(text_encoders) == 1:
        text = {TEXT_PREFIX + clip_key(k): v for k, v in text_encoders[0].state_dict().items()}
        token = TEXT_PREFIX + "text_model.embeddings.token_embedding.weight"
        return _trimmed(text, token, vocab_size)
    first, second = text_encoders
    clip_prefix, open_clip_prefix = SDXL_TEXT_PREFIXES
    clip = {clip_prefix + clip_key(k): v for k, v in first.state_dict().items()}
    _trimmed(clip, clip_prefix + "text_model.embeddings.token_embedding.weight", vocab_size)
    open_clip = {open_clip_prefix + k: v for k, v in open_clip_state(second.state_dict()).items()}
    _trimmed(open_clip, open_clip_prefix + "token_embedding.weight", vocab_size)
    return {**clip, **open_clip}


def components_to_ldm(
    unet: Any, vae: Any, text_encoder: Any | list[Any], vocab_size: int | None = None
) -> dict[str, torch.Tensor]:
    """UNet, VAE and text encoder(s) of SD 1.x or SDXL (a list of two) as one original-layout
    state dict (fp32, CPU).

    ``vocab_size``: keep only the first rows of the token embeddings, the tokenizer's own
    vocabulary (a single file carries no tokenizer, so added concept tokens cannot be in it;
    their A1111 embedding files go with it).
    """
    encoders = text_encoder if isinstance(text_encoder, list) else [text_encoder]
    state = {
        **unet_to_ldm(unet.state_dict(), unet.config),
        **vae_to_ldm(vae.state_dict(), vae.config),
        **text_encoders_to_ldm(encoders, vocab_size),
    }
    # Buffers the original checkpoints do not hold (transformers' position ids).
    state = {k: v for k, v in state.items() if not k.endswith("embeddings.position_ids")}
    return {k: v.detach().float().cpu().contiguous() for k, v in state.items()}


def write_single_file(
    path: Path, unet: Any, vae: Any, text_encoder: Any | list[Any], vocab_size: int | None = None
) -> Path:
    """Write the components as one original-layout safetensors checkpoint."""
    save_file(components_to_ldm(unet, vae, text_encoder, vocab_size), str(path))
    return path


def check_single_file_family(wanted: bool, family: str) -> None:
    """The single file is SD 1.x's or SDXL's original layout: refuse it on another family at
    start."""
    if wanted and family not in ("sd1", "sdxl"):
        raise ValueError(
            "export_single_file writes SD 1.x's and SDXL's original checkpoint layouts; leave "
            f"it off on the {family} backbone (its export folder loads in diffusers as it is)."
        )
