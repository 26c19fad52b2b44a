"""Save and load a pretrained contextualizer with its ``[MASK]`` vector (safetensors + json).

The default place is one folder per base model, ``$PERSONALIZE_CACHE/runs/contextualizer/<model>``
(the cache root of the tiny pipelines), so the pretraining run writes where the ``mlm``
regularizer looks without any path in the configs, and tiny-sd and SD 1.5 never mix. The json
records which text encoder and tokenizer psi was trained on; loading checks them.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from transformers import CLIPTextModel, CLIPTokenizer

from components.contextualizer.network import Contextualizer, ContextualizerConfig
from core.cache import cache_root
from pretrained.tiny_sd import TINY_MODEL_NAME

WEIGHTS_FILE = "contextualizer.safetensors"
CONFIG_FILE = "contextualizer.json"
MASK_KEY = "mask_vector"
FORMAT_VERSION = 1
PRETRAIN_CONFIG = "configs/diverse_context/contextualizer.yaml"
SD15_NAME = "stable-diffusion-v1-5/stable-diffusion-v1-5"  # the pretraining config's default


def default_contextualizer_dir(pretrained_model_name_or_path: str) -> Path:
    """Where the pretraining of a base model exports psi, and where MLM reads it by default."""
    key = re.sub(r"[^\w.-]+", "--", pretrained_model_name_or_path.strip("/\\")) or "model"
    return cache_root() / "runs" / "contextualizer" / key


def pretraining_command(name_or_path: str) -> str:
    """The exact command that exports psi for a base model to its default place."""
    command = f"python train.py fit --config {PRETRAIN_CONFIG}"
    if name_or_path == TINY_MODEL_NAME:
        return command + " --config configs/tiny.yaml"
    if name_or_path != SD15_NAME:
        command += f" --model.init_args.pretrained_model_name_or_path {shlex.quote(name_or_path)}"
    return command


def tokenizer_fingerprint(tokenizer: CLIPTokenizer, vocab_size: int) -> str:
    """sha256 of the base vocabulary (ids below the text encoder's vocab size)."""
    vocab = sorted((i, t) for t, i in tokenizer.get_vocab().items() if i < vocab_size)
    return hashlib.sha256(json.dumps(vocab).encode("utf-8")).hexdigest()


def text_encoder_fingerprint(text_encoder: CLIPTextModel) -> str:
    """sha256 of a few frozen weights: catches another checkpoint of the same shape."""
    rows = text_encoder.get_input_embeddings().weight[:64]
    # (transformers 4 nests it under text_model., 5 does not)
    params = text_encoder.named_parameters()
    norm = next(p for n, p in params if n.endswith("final_layer_norm.weight"))
    digest = hashlib.sha256()
    for tensor in (rows, norm):
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def save_contextualizer(
    folder: Path,
    contextualizer: Contextualizer,
    mask_vector: torch.Tensor,
    metadata: dict[str, Any],
) -> list[Path]:
    """Write ``contextualizer.safetensors`` and ``contextualizer.json`` into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {
        f"contextualizer.{k}": v.detach().float().cpu().contiguous()
        for k, v in contextualizer.state_dict().items()
    }
    tensors[MASK_KEY] = mask_vector.detach().float().cpu().reshape(-1).contiguous()
    save_file(tensors, str(folder / WEIGHTS_FILE))
    info = {"format": FORMAT_VERSION, **contextualizer.config.to_dict(), **metadata}
    (folder / CONFIG_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return [folder / WEIGHTS_FILE, folder / CONFIG_FILE]


def load_contextualizer(folder: Path) -> tuple[Contextualizer, torch.Tensor, dict[str, Any]]:
    """(psi, [MASK] vector (D,), the json's contents); FileNotFoundError if not exported."""
    weights, config_file = folder / WEIGHTS_FILE, folder / CONFIG_FILE
    if not weights.is_file() or not config_file.is_file():
        raise FileNotFoundError(f"No {WEIGHTS_FILE} + {CONFIG_FILE} in {folder}.")
    info = json.loads(config_file.read_text())
    fields = ContextualizerConfig.__dataclass_fields__
    contextualizer = Contextualizer(ContextualizerConfig(**{k: info[k] for k in fields}))
    tensors = load_file(str(weights))
    prefix = "contextualizer."
    state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    contextualizer.load_state_dict(state)
    return contextualizer, tensors[MASK_KEY], info


def check_compatible(
    info: dict[str, Any], tokenizer: CLIPTokenizer, text_encoder: CLIPTextModel, folder: Path
) -> None:
    """Raise if psi was trained for another tokenizer or text encoder shape; warn on weights."""
    rerun = pretraining_command(str(info.get("pretrained_model_name_or_path", "<model>")))
    vocab_size = text_encoder.config.vocab_size
    if info["hidden_size"] != text_encoder.config.hidden_size or info["vocab_size"] != vocab_size:
        raise ValueError(
            f"The contextualizer in {folder} expects hidden size {info['hidden_size']} and "
            f"vocabulary {info['vocab_size']}, but this text encoder has "
            f"{text_encoder.config.hidden_size} and {vocab_size}; pretrain one for this model."
        )
    if info.get("tokenizer_sha256") != tokenizer_fingerprint(tokenizer, vocab_size):
        raise ValueError(
            f"The contextualizer in {folder} was trained with another tokenizer "
            f"({info.get('pretrained_model_name_or_path')}); pretrain one for this model, e.g. "
            f"`{rerun}` with this model's name."
        )
    if info.get("text_encoder_sha256") != text_encoder_fingerprint(text_encoder):
        warnings.warn(
            f"The contextualizer in {folder} was trained on other text-encoder weights than "
            "this model's; its MLM loss means little unless the weights are close (e.g. a "
            "fine-tuned copy).",
            stacklevel=2,
        )
