"""CLIF stage 2 (section 4.3): a shared UNet LoRA plus the tokens, from stage 1's export.

The concepts' vectors start from stage 1's ``<token>.safetensors`` and keep training; stage 1's
text-encoder LoRA (when it trained one) is loaded with diffusers' own loader and frozen, so
the text encoder is bit for bit what stage 1 left. The photos and the M-Aug images
(``data.init_args.augmentation.train_on_m_aug``) train one LoRA for all the concepts. The
export is LoRA's: the UNet LoRA and stage 1's text-encoder LoRA in one
``pytorch_lora_weights.safetensors``, and the tokens. On SDXL stage 1's token files hold both
encoders' vectors (``clip_l`` / ``clip_g``) and each encoder starts from its own.
"""

from __future__ import annotations

import hashlib
import inspect
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors.torch import load_file

from exports.external_formats import FLUX_EMBEDDING_KEYS, SDXL_EMBEDDING_KEYS
from models.lora import LoRA
from models.lora_adapters import LORA_WEIGHTS

DIGEST_KEY = "clif_stage1_digest"


def stage1_digest(folder: Path) -> str:
    """sha256 over stage 1's token and LoRA files (names and bytes)."""
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*.safetensors")):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


def stage1_vectors(path: Path, token: str, encoders: int) -> list[torch.Tensor]:
    """Each text encoder's vectors in one of stage 1's token files (SD 1.x ``{token: ...}``,
    SDXL ``{"clip_l": ..., "clip_g": ...}``, FLUX ``{"clip_l": ..., "t5": ...}``), refusing a
    file of another family."""
    state = load_file(str(path))
    keys = next((k for k in (SDXL_EMBEDDING_KEYS, FLUX_EMBEDDING_KEYS) if set(k) <= set(state)), ())
    per_encoder = [state[key] for key in keys] if keys else [state[token]] if token in state else []
    if len(per_encoder) != encoders:
        raise ValueError(
            f"{path} holds vectors for {len(per_encoder)} text encoder(s) (keys "
            f"{sorted(state)}), this model has {encoders}: stage 2 must use stage 1's base model."
        )
    return per_encoder


def load_stage1_tokens(module: LoRA, folder: Path) -> None:
    """Copy each concept's vectors from stage 1's export (an error names a missing one)."""
    for index, concept in enumerate(module.concepts):
        path = folder / f"{concept.token}.safetensors"
        if not path.is_file():
            raise FileNotFoundError(
                f"stage 1's export {folder} has no {path.name}: stage 2 must learn the same "
                "concepts (tokens) as stage 1 did."
            )
        saved = stage1_vectors(path, concept.token, len(module.encoder_concept_tokens))
        for vectors, tokens in zip(saved, module.encoder_concept_tokens):
            target = tokens.vectors_of(index)
            if vectors.shape != target.shape:
                raise ValueError(
                    f"{path} holds vectors {tuple(vectors.shape)}, this run's {concept.token} "
                    f"has {tuple(target.shape)}; use stage 1's num_vectors."
                )
            with torch.no_grad():
                target.copy_(vectors.to(target.dtype))


def load_stage1_text_lora(module: LoRA, folder: Path) -> bool:
    """Stage 1's text-encoder LoRA into the text encoder, frozen; False when there is none."""
    if not (folder / LORA_WEIGHTS).is_file():
        return False
    import diffusers

    # The family's pipeline class reads its own key layout (SDXL's names two text encoders).
    loader = getattr(diffusers, module.family.pipeline_class_names[0])
    # The file's peft config (metadata) carries stage 1's rank and alpha; without it diffusers
    # would take alpha = rank and scale the text encoder differently from stage 1's.
    # Some readers (FLUX's) return the alphas only when asked for them.
    takes = inspect.signature(loader.lora_state_dict).parameters
    asked = {"return_alphas": True} if "return_alphas" in takes else {}
    state, alphas, metadata = loader.lora_state_dict(
        str(folder), weight_name=LORA_WEIGHTS, return_lora_metadata=True, **asked
    )
    if not any(key.startswith("text_encoder.") for key in state):
        return False
    loader.load_lora_into_text_encoder(
        state, alphas, text_encoder=module.text_encoder, prefix="text_encoder",
        adapter_name="default", metadata=metadata,
    )  # fmt: skip
    module.text_encoder.requires_grad_(False)
    return True


class CLIFMultiConceptLoRA(LoRA):
    """LoRA on the UNet (shared by the concepts) + tokens, text encoder frozen from stage 1."""

    families: ClassVar[frozenset[str]] = frozenset({"sd1", "sdxl", "flux"})

    def __init__(self, stage1: str, **kwargs: Any) -> None:
        """
        Args:
            stage1: stage 1's export folder (``<run>/export``), its tokens and text LoRA.
        """
        if kwargs.pop("train_text_encoder", False):
            raise ValueError(
                "CLIF stage 2 keeps the text encoder frozen (stage 1 tuned it); drop "
                "model.init_args.train_text_encoder."
            )
        folder = Path(stage1)
        if not folder.is_dir():  # before the (slow) model load
            raise FileNotFoundError(
                f"stage1 folder {stage1!r} does not exist; give stage 1's export folder "
                "(runs/<stage 1 run>/export)."
            )
        kwargs.setdefault("train_tokens", True)
        super().__init__(train_text_encoder=False, **kwargs)
        # What stage 1 handed over: a resumed or tested stage 2 must start from the same.
        self.stage1_digest = stage1_digest(folder)
        load_stage1_tokens(self, folder)
        self.stage1 = str(folder)
        self.text_lora_from_stage1 = load_stage1_text_lora(self, folder)
        # Loading an adapter freezes the module it touches: the tokens train again.
        for tokens in self.encoder_concept_tokens:
            tokens.embedding.vectors.requires_grad_(bool(kwargs["train_tokens"]))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint[DIGEST_KEY] = self.stage1_digest

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        stored = checkpoint.get(DIGEST_KEY)
        if stored is not None and stored != self.stage1_digest:
            raise ValueError(
                f"stage 1's export {self.stage1} changed since this checkpoint was written (its "
                "tokens or text LoRA differ), so the frozen text encoder would not be the one "
                "stage 2 trained with; point model.init_args.stage1 at the export it started from."
            )
        super().on_load_checkpoint(checkpoint)
