"""ClassDiffusion's Semantic Preservation Loss (SPL), ``spl``.

    L_spl = mean over the batch of  1 - cos(E_tp, E_cp)

E_tp: the pooled text feature of the training prompt ("a photo of a <v1> dog"), E_cp: that of
the same prompt without the concept token ("a photo of a dog", the ``superclass_prompts`` batch
key). Each sample carries one concept, so the mean over the batch is the mean over concepts and
samples (the paper's Eq. 10 sums; a mean keeps weight 1 meaning the same at any batch size).

Pooling (docs/DESIGN.md, "SPL"): the paper pools at the end-of-text token, as CLIP does
(``pool: eos``, the default); the official code pools at the highest token id, which in the
concept prompt is the new token (``pool: concept``) and in the superclass prompt is
end-of-text. ``project`` applies
CLIP's text projection to both (off in the paper and the official code).

On SDXL (docs/DESIGN.md, "A backbone family") the features are read from what its UNet reads:
the conditioning states (both encoders' penultimate states, concatenated) at the pooling
position. With ``project``, ``text_feature`` says which projected feature: ``pooled`` (the
``auto`` choice) is SDXL's pooled text, the second encoder's own projected end-of-text feature
(``text_embeds``; CLIP-space, so ``clip_model`` does not apply); ``clip`` is CLIP ViT-L's
projection of the first encoder's last-layer end-of-text state, as PDLoss offers.

With XTI/P+ (``every_layer``, the default) the loss is the mean over every cross-attention
layer's states, so each layer's token is pulled towards the class, not only ``text_layer``'s.

The concept side reuses the step record's encoding of the prompts (no second text-encoder
pass), so gradients reach whatever produced it: the concept tokens, and the text encoder if it
trains. The superclass side is a constant target (no gradient, cached while the encoder is
frozen; prompts not cached yet join the step's text pass as a text request): the loss pulls
the concept towards its class, not the class towards the concept.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F

from components.text_projection import (
    TextFeature,
    check_pooled_text_options,
    check_text_feature,
    chosen_text_feature,
)
from components.text_projection import project as apply_projection
from losses.base import Regularizer
from losses.prompt_cache import FrozenPromptCache, possible_texts
from step.encoding import TextEncoding
from step.record import StepRecord
from step.requests import TextRequest

if TYPE_CHECKING:
    from losses.model_view import ModelView

Pool = Literal["eos", "concept"]


def concept_token_positions(module: ModelView, record: StepRecord) -> torch.Tensor:
    """Position of the first concept token (a concept's first vector) in each prompt."""
    token_ids = module.tokenizer.convert_tokens_to_ids([c.token for c in module.concepts])
    wanted = torch.as_tensor(token_ids, device=record.input_ids.device)
    hits = torch.isin(record.input_ids, wanted)
    found = hits.any(dim=1)
    if not bool(found.all()):
        missing = [p for p, hit in zip(record.batch["prompts"], found.tolist()) if not hit]
        raise ValueError(
            f"SPL with pool='concept' found no concept token in prompts {missing}; the token "
            "may have been cut off by the tokenizer's length limit. Shorten the prompt or use "
            "pool: eos."
        )
    return hits.int().argmax(dim=1)


class SemanticPreservationLoss(Regularizer):
    """1 - cos between the concept prompt's and the superclass prompt's pooled features."""

    name = "spl"
    requires = frozenset({"superclass_prompts"})
    families = frozenset({"sd1", "sdxl", "flux"})

    def __init__(
        self,
        weight: float = 1.0,
        pool: Pool = "eos",
        project: bool = False,
        clip_model: str | None = None,
        every_layer: bool = True,
        text_feature: TextFeature = "auto",
    ) -> None:
        """
        Args:
            weight: lambda of L = L_recon + lambda L_spl (the paper uses 1).
            pool: ``eos`` (the paper) or ``concept`` (the official code's effective choice).
            project: apply CLIP's text projection to both features before the cosine.
            clip_model: where the projection comes from (None: the CLIP matching the model).
            every_layer: with XTI/P+, the mean of the loss over every cross-attention layer's
                states (each layer's token); False: only the ``text_layer``'s. Other
                baselines have one set of states either way.
            text_feature: with ``project``, which projected feature: ``clip`` (CLIP's text
                projection of the first encoder's last-layer end-of-text state), ``pooled``
                (the family's own pooled text, SDXL's), ``auto`` (``pooled`` where the family
                has one). Without ``project`` it must stay ``auto``.
        """
        super().__init__(weight)
        if pool not in ("eos", "concept"):
            raise ValueError(f"SPL pool must be 'eos' or 'concept', got {pool!r}.")
        self.pool = pool
        self.project = project
        self.clip_model = clip_model
        self.every_layer = every_layer
        self.text_feature = check_text_feature(text_feature)
        if self.text_feature != "auto" and not project:
            raise ValueError(
                f"SPL text_feature: {text_feature} chooses a projected feature; set project: "
                "true, or leave text_feature: auto to compare the unprojected states."
            )
        self.cache = FrozenPromptCache()

    def prepare(self, module: ModelView) -> None:
        """Load the projection before training, so a bad ``clip_model`` fails at start."""
        if not self.project:
            return
        if chosen_text_feature(module, self.text_feature, "SPL") == "pooled":
            check_pooled_text_options("SPL", self.clip_model, self.pool)
        else:
            if self.pool != "eos" and module.family.name != "sd1":
                raise ValueError(
                    "SPL text_feature: clip on this backbone reads the first encoder's "
                    "end-of-text state; set pool: eos, or project: false."
                )
            module.text_projection(self.clip_model)

    def prefill(self, module: ModelView, datamodule: Any) -> None:
        """Encode every superclass prompt the DataModule can give, once, before training."""
        self.cache.prefill(module, possible_texts(datamodule, ["superclass_prompts"]))

    def text_requests(
        self, batch: dict[str, Any], module: ModelView
    ) -> list[TextRequest]:
        """The superclass prompts not cached yet, encoded in the step's text pass."""
        return self.cache.requests(module, list(batch["superclass_prompts"]))

    def forward(self, record: StepRecord, module: ModelView) -> torch.Tensor:
        eos = module.tokenizer.eos_token_id
        layers = record.layer_states if self.every_layer else None
        concept = TextEncoding(
            record.encoder_hidden_states, record.input_ids, layers,
            clip_states=record.clip_states, states_follow_ids=record.states_follow_ids,
        )  # fmt: skip
        if self.pool == "eos":
            positions = concept.eos_positions(eos)
        else:
            positions = concept_token_positions(module, record)
        rows = torch.arange(positions.shape[0], device=positions.device)
        concept_features = concept.per_layer()[:, rows, positions]  # (layers, B, D)
        fresh = [encoding for _, encoding in self.requested_text(record, module)]
        superclass = list(record.batch["superclass_prompts"])
        superclass_encoding = self.cache.encode(module, superclass, *fresh)
        superclass_features = superclass_encoding.pooled(eos)
        feature = chosen_text_feature(module, self.text_feature, "SPL") if self.project else ""
        if feature == "pooled":  # SDXL's own projected feature
            concept_features = record.text_embeds.unsqueeze(0)  # type: ignore[union-attr]
            superclass_features = superclass_encoding.text_embeds  # type: ignore[assignment]
        elif feature == "clip":
            if record.clip_pooled is not None:  # SDXL: CLIP ViT-L's last-layer end-of-text
                concept_features = record.clip_pooled.unsqueeze(0)
                superclass_features = superclass_encoding.clip_text_feature(eos)
            projection = module.text_projection(self.clip_model)
            concept_features = apply_projection(projection, concept_features)
            superclass_features = apply_projection(projection, superclass_features)
        target = superclass_features.float().unsqueeze(0).expand_as(concept_features)
        cosine = F.cosine_similarity(concept_features.float(), target, dim=-1)
        return (1.0 - cosine).mean()
