"""Mix-of-Show's ED-LoRA (Gu et al. 2023): one concept's layer-wise embedding plus LoRA.

ED-LoRA ("embedding-decomposed LoRA", section 3.2) is P+'s layer-wise concept embedding with LoRA
on the text encoder and the UNet. The embedding is decomposed as the authors' code does it
(TencentARC/Mix-of-Show, ``trainer_edlora.py``: ``new_concept_token: <potter1>+<potter2>``,
``initializer_token: <rand-0.013>+man``): the concept token is two tokens, each with one vector
per cross-attention layer, the first a random draw N(0, 0.013^2) (the concept's own identity,
free of the class word), the second initialised from the class word (the class it belongs to).
Each part starts from one vector copied to every layer, as their code does. Here that is
XTI with ``num_vectors: 2`` (``<v1>`` is written ``<v1> <v1>_1``), vector 0 the random part.

LoRA as their recipe (``options/train/EDLoRA/real/8101_EDLoRA_potter_Cmix_B4_Repeat500.yml``):
rank 4 on every linear of the UNet's attentions (``where: Attention``: to_q, to_k, to_v,
to_out.0 of self- and cross-attention) and of the text encoder's CLIPAttention (q/k/v/out_proj).
Their LoRA adds ``alpha * up(down(x))`` with alpha 1.0, i.e. peft's ``lora_alpha / r`` = 1:
``alpha: null`` (alpha = rank) here. Their embedding-norm stop (``emb_norm_threshold`` 0.55:
once the mean norm of the concept's vectors reaches it, the vectors stop updating for the rest
of training) is ``embedding_norm_threshold``.

Export: XTI's ``xti_embeds.safetensors`` and ``pytorch_lora_weights.safetensors`` in diffusers'
format (peft config as metadata). A plain pipeline cannot read per-layer tokens: `load_edlora`
installs both into a pipeline (XTI's tokens and processors, then ``load_lora_weights``), and
`edlora_pipeline` builds XTI's pipeline that generates from plain prompts. Several concepts'
exports are merged into one model by gradient fusion (models/mix_of_show_fusion.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from exports.manifest import Format
from models.lora_adapters import (
    LORA_WEIGHTS,
    TEXT_ENCODER_TARGETS,
    add_seeded_adapters,
    check_lora_options,
    lora_parameters,
    save_lora_layers,
)
from models.xti import XTI, XTI_EMBEDS, load_xti, xti_pipeline

# Mix-of-Show's initializer ``<rand-0.013>``: the std of the random part's Gaussian draw.
RANDOM_PART_STD = 0.013
# Their ``emb_norm_threshold``: the mean vector norm at which the embedding stops training.
EMBEDDING_NORM_THRESHOLD = 0.55
# How many tokens (vectors per layer) one concept is: the random part and the class part.
PARTS = 2


def load_edlora(pipe: Any, folder: str | Path) -> list[str]:
    """Install an ED-LoRA export: XTI's per-layer tokens and processors, then its LoRA with
    diffusers' ``load_lora_weights``. Generate with `models.xti.xti_prompt_embeds` (any
    pipeline) or through `edlora_pipeline`. Returns the tokens loaded."""
    # diffusers parses the LoRA file first (a missing or foreign file changes nothing), then
    # the tokens go in (load_xti checks everything before it changes the pipeline).
    pipe.lora_state_dict(str(folder), weight_name=LORA_WEIGHTS)
    tokens = load_xti(pipe, folder)
    pipe.load_lora_weights(str(folder), weight_name=LORA_WEIGHTS)  # (with its alpha metadata)
    return tokens


def edlora_pipeline(pretrained_model_name_or_path: str, folder: str | Path, **kwargs: Any) -> Any:
    """XTI's pipeline of the base model (it generates from plain prompts) with the export in."""
    pipe = xti_pipeline(pretrained_model_name_or_path, folder, **kwargs)
    pipe.load_lora_weights(str(folder), weight_name=LORA_WEIGHTS)
    return pipe


class EDLoRA(XTI):
    """Layer-wise (P+) decomposed concept embedding + LoRA on the text encoder and the UNet."""

    EXPORT_FORMATS: ClassVar[tuple[tuple[str, str], ...]] = (
        (XTI_EMBEDS, Format.XTI_EMBEDDINGS),
        (LORA_WEIGHTS, Format.DIFFUSERS_LORA),
    )
    families: ClassVar[frozenset[str]] = frozenset({"sd1"})
    family_refusals: ClassVar[dict[str, str]] = {
        "sdxl": "Mix-of-Show's ED-LoRA and gradient fusion are written for SD 1.x's one text "
        "encoder and 16 cross-attention layers",
        "flux": "FLUX has no per-layer text input for the layer-wise embedding",
    }
    LOAD_INSTEAD: ClassVar[str] = (
        "its per-layer tokens need XTI's prompt encoding; models.mix_of_show.edlora_pipeline("
        "<base model>, folder) builds a pipeline that generates from plain prompts (or "
        "load_edlora(pipe, folder), then pipe(prompt_embeds=xti_prompt_embeds(pipe, prompts)))"
    )

    def __init__(
        self,
        rank: int = 4,
        alpha: float | None = None,
        random_part_std: float = RANDOM_PART_STD,
        embedding_norm_threshold: float | None = EMBEDDING_NORM_THRESHOLD,
        num_vectors: int = PARTS,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            rank: LoRA rank of every adapter (theirs: 4).
            alpha: peft's LoRA alpha (update scaled by alpha / rank); None: alpha = rank, the
                scale 1 of their ``alpha: 1.0`` (their LoRA multiplies by alpha, not alpha / r).
            random_part_std: std of the random part's initial vector (theirs: 0.013).
            embedding_norm_threshold: the concept vectors stop training once their mean norm
                reaches it (theirs: 0.55; scale-dependent: CLIP ViT-L's word vectors have norm
                ~0.4); None: they train throughout.
            num_vectors: 2, the two parts (declared here so the CLI's default is 2).
            kwargs: XTI's and the base's options.
        """
        alpha = check_lora_options(rank, alpha)
        if num_vectors != PARTS:
            raise ValueError(
                f"ED-LoRA's concept token is {PARTS} tokens (a random part and a class part), "
                f"so num_vectors is {PARTS}; got {num_vectors}."
            )
        if random_part_std <= 0:
            raise ValueError(f"random_part_std must be > 0, got {random_part_std}.")
        if embedding_norm_threshold is not None and embedding_norm_threshold <= 0:
            raise ValueError(
                f"embedding_norm_threshold must be > 0 (or null: no stop), got "
                f"{embedding_norm_threshold}."
            )
        super().__init__(num_vectors=num_vectors, **kwargs)
        self.rank, self.alpha = rank, alpha
        self.random_part_std = random_part_std
        self.embedding_norm_threshold = embedding_norm_threshold
        if kwargs.get("init_embeddings") is None:  # (saved vectors keep their random part)
            self._randomise_first_part()
        targets = [(self.unet, self.family.lora_targets), (self.text_encoder, TEXT_ENCODER_TARGETS)]
        # Their LoRA layers start A Kaiming-uniform (peft's default), not diffusers' Gaussian.
        add_seeded_adapters(targets, rank, alpha, self.seed, init=True)
        # peft marks everything but its adapters as frozen, the concept vectors included.
        self.concept_tokens.embedding.vectors.requires_grad_(True)
        self._stopped_vectors: torch.Tensor | None = None
        self.train(self.training)

    def _randomise_first_part(self) -> None:
        """Each concept's vector 0 in every layer: one N(0, std^2) draw (seeded by ``seed``),
        copied to all layers as their code copies one initial feature to the 16 tokens."""
        generator = torch.Generator().manual_seed(self.seed)
        with torch.no_grad():
            for index in range(len(self.concepts)):
                vectors = self.layer_vectors(index)  # (layers, 2, dim), a view of the table
                draw = torch.randn(vectors.shape[-1], generator=generator)
                vectors[:, 0] = (self.random_part_std * draw).to(vectors.dtype)

    def trained_components(self) -> tuple[nn.Module, ...]:
        return (self.unet, self.text_encoder)

    def trainable_groups(self) -> dict[str, list[nn.Parameter]]:
        """``tokens`` (theirs: lr 1e-3), ``text_encoder_lora`` (1e-5), ``lora`` (UNet, 1e-4)."""
        groups = super().trainable_groups()
        groups["text_encoder_lora"] = lora_parameters(self.text_encoder)
        groups["lora"] = lora_parameters(self.unet)
        return groups

    # ----- the embedding-norm stop ------------------------------------------------------------
    def embedding_norm(self) -> float:
        """Mean L2 norm of every concept vector (all layers, both parts), their ``Norm_mean``."""
        return float(self.concept_tokens.embedding.vectors.detach().norm(dim=-1).mean())

    def _check_norm_stop(self) -> None:
        """Freeze the vectors (a snapshot restored after every step) once the norm reaches the
        threshold. Frozen vectors keep that norm, so a resumed run finds the stop again in its
        checkpoint's vectors: no extra state to save."""
        if self.embedding_norm_threshold is None:
            return
        vectors = self.concept_tokens.embedding.vectors
        if self._stopped_vectors is not None:
            with torch.no_grad():
                vectors.copy_(self._stopped_vectors)
        elif self.embedding_norm() >= self.embedding_norm_threshold:
            self._stopped_vectors = vectors.detach().clone()

    def on_train_start(self) -> None:
        super().on_train_start()
        self._stopped_vectors = None
        self._check_norm_stop()

    def on_weights_updated(self) -> None:
        """After each optimizer step, before the EMA takes the weights in: the stop."""
        self._check_norm_stop()

    # ----- export -----------------------------------------------------------------------------
    def export(self, folder: Path) -> list[Path]:
        """XTI's ``xti_embeds.safetensors`` and ``pytorch_lora_weights.safetensors`` (UNet and
        text encoder, diffusers' keys, peft config as metadata)."""
        written = super().export(folder)
        components = {"unet": self.unet, "text_encoder": self.text_encoder}
        return [*written, save_lora_layers(folder, components, self.family.lora_writer)]
