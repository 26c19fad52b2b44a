"""CLIF stage 1 (section 4.2): contrastive text tuning of the concept tokens, no UNet call.

The loss is the ``clif`` InfoNCE (losses/clif.py) between the augmented images (G- and R-Aug)
and their prompts. What trains: the concept tokens and, by default as the paper says, a
peft LoRA on the text encoder's attention projections (``train_text_encoder: false`` trains
the tokens only, as the official code does). The export is what stage 2 starts from and what
diffusers loads: ``<token>.safetensors`` per concept, and with the LoRA
``pytorch_lora_weights.safetensors`` holding text-encoder layers only.

On SDXL the text side is the first encoder, CLIP ViT-L, as CLIF's official SDXL code reads it
(losses/clif.py): its token vectors and, with ``train_text_encoder``, a LoRA on it train; the
second encoder's vectors receive no gradient from the InfoNCE and stay at their initializer
(the official code trains the first encoder's view of the token only, too).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from exports.manifest import TOKEN_FILE_FORMATS, Format
from losses.clif import CLIF_BATCH_KEYS, ContrastiveLanguageImageLoss
from models.base import PersonalizationModule
from models.lora import load_lora
from models.lora_adapters import (
    LORA_WEIGHTS,
    TEXT_ENCODER_TARGETS,
    add_seeded_adapters,
    check_lora_options,
    lora_parameters,
    save_lora_layers,
)
from step.draws import SampleDraws
from step.requests import encode_request

STAGE1_REQUESTER = "CLIF stage 1 (models.CLIFTextTuning)"


class CLIFTextTuning(PersonalizationModule):
    """Tokens (+ text-encoder LoRA) trained by the contrastive loss alone."""

    EXPORT_FORMATS: ClassVar[tuple[tuple[str, str], ...]] = (
        (LORA_WEIGHTS, Format.DIFFUSERS_LORA),  # text-encoder layers only
        *TOKEN_FILE_FORMATS,
    )
    load_into = staticmethod(load_lora)  # the text-encoder LoRA when there is one, the tokens
    families: ClassVar[frozenset[str]] = frozenset({"sd1", "sdxl", "flux"})

    def __init__(
        self,
        train_text_encoder: bool = True,
        rank: int = 4,
        alpha: float | None = None,
        clip_model: str | None = None,
        temperature: float | None = None,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            train_text_encoder: a LoRA on the text encoder trains with the tokens (the
                paper); false trains the tokens only (the official code). Group
                ``text_encoder_lora``.
            rank, alpha: that LoRA's rank and alpha (None: alpha = rank).
            clip_model, temperature: the contrastive loss's (see losses/clif.py).
        """
        if kwargs.get("regularizers"):
            raise ValueError(
                "CLIF stage 1 trains on the contrastive loss alone (it makes no UNet call); "
                "remove model.init_args.regularizers, or add the clif loss to another baseline."
            )
        alpha = check_lora_options(rank, alpha)
        if not train_text_encoder and kwargs.get("learning_rates"):
            # The recipe's rate for the LoRA stays in the config when the flag turns it off.
            rates = dict(kwargs["learning_rates"])
            rates.pop("text_encoder_lora", None)
            kwargs["learning_rates"] = rates
        super().__init__(**kwargs)
        self.contrastive = ContrastiveLanguageImageLoss(1.0, clip_model, temperature)
        self.train_text_encoder, self.rank, self.alpha = train_text_encoder, rank, alpha
        if train_text_encoder:  # the encoder the InfoNCE reads (SDXL's first, CLIP ViT-L)
            add_seeded_adapters([(self.text_encoder, TEXT_ENCODER_TARGETS)], rank, alpha, self.seed)
            # peft marks everything but its adapters frozen, the concept vectors included.
            for tokens in self.encoder_concept_tokens:
                tokens.embedding.vectors.requires_grad_(kwargs.get("train_tokens", True))
        self.train(self.training)

    def trained_components(self) -> tuple[nn.Module, ...]:
        return (self.text_encoder,) if self.train_text_encoder else ()

    def trainable_groups(self) -> dict[str, list[nn.Parameter]]:
        groups = super().trainable_groups()
        if self.train_text_encoder:
            groups["text_encoder_lora"] = lora_parameters(self.text_encoder)
        return groups

    def batch_requirements(self) -> dict[str, frozenset[str]]:
        return {**super().batch_requirements(), STAGE1_REQUESTER: CLIF_BATCH_KEYS}

    def setup(self, stage: str) -> None:
        super().setup(stage)
        self.contrastive.prepare(self)

    def contrastive_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        """One text-encoder call on the pairs' prompts, then the InfoNCE."""
        (request,) = self.contrastive.text_requests(batch, self)
        return self.contrastive.loss_from(batch, encode_request(self, request), self)

    def compute_losses(self, batch: dict[str, Any], draws: SampleDraws) -> dict[str, Any]:
        loss = self.contrastive_loss(batch)
        return {"parts": {"clif": loss}, "total": loss}

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.log("val/loss/clif", self.contrastive_loss(batch), batch_size=len(batch["prompts"]))

    def export(self, folder: Path) -> list[Path]:
        """``<token>.safetensors`` per concept, and the text-encoder LoRA when it trains."""
        folder.mkdir(parents=True, exist_ok=True)
        written = []
        if self.train_text_encoder:
            encoder = {"text_encoder": self.text_encoder}
            written.append(save_lora_layers(folder, encoder, self.family.lora_writer))
        paths = {c.token: folder / f"{c.token}.safetensors" for c in self.concepts}
        return written + self.export_token_embeddings(paths)
