"""ACCORD's Prior Decouple Loss (PDLoss), ``pd``: Eq. (14) of the paper.

    L_pd = E_{c_g} | cos(f_p, f_g) - target |,   target = cos(f_s, f_g)  (``superclass``)
                                                          or a constant 0 / -1 (Table 6)

f = CLIP's text projection of the pooled (end-of-text) feature of a text: f_p of the concept
phrase c_p ("<v1> backpack"), f_s of its superclass c_s ("backpack"), f_g of the caption's
general part c_g (the caption without the concept phrase). Each sample contributes its own
caption's c_g, so the batch mean is a sample of the expectation over c_g.

Gradient reaches f_p only (the concept tokens, and a trained text encoder); f_s and f_g are
targets, encoded without gradient and cached while the text encoder is frozen. Both the concept
phrases and the targets not yet cached are text requests, encoded in the step's own text pass.

On SDXL, f is SDXL's pooled text: the second encoder's (OpenCLIP ViT-bigG's) own projection of
its end-of-text feature, a CLIP-space text feature as the paper's f is, and the pooled
condition SDXL's UNet reads, so the loss decouples what the model is conditioned on. The first
encoder (CLIP ViT-L) feeds the UNet only its penultimate states, and ViT-L's projection
does not apply to those; ``text_feature: clip`` takes that encoder's last-layer end-of-text
state through ViT-L's projection instead (``clip_model`` applies then, and only then).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F

from components.text_masking import trim_padding
from components.text_projection import (
    TextFeature,
    check_pooled_text_options,
    check_text_feature,
    chosen_text_feature,
    project,
)
from losses.base import Regularizer
from losses.prompt_cache import FrozenPromptCache, possible_texts
from step.record import StepRecord
from step.requests import TextRequest

if TYPE_CHECKING:
    from losses.model_view import ModelView


def prior_decouple(
    f_p: torch.Tensor, f_g: torch.Tensor, f_s: torch.Tensor, target: str | float
) -> torch.Tensor:
    """ACCORD's PDLoss from its features: mean |cos(f_p, f_g) - target| with target
    cos(f_s, f_g) (``superclass``) or a constant."""
    cos_pg = F.cosine_similarity(f_p, f_g, dim=-1)
    if target == "superclass":
        wanted = F.cosine_similarity(f_s, f_g, dim=-1)
    else:
        wanted = torch.full_like(cos_pg, float(target))
    return (cos_pg - wanted).abs().mean()


class PriorDecoupleLoss(Regularizer):
    """|cos(f_p, f_g) - cos(f_s, f_g)| on CLIP-projected text features, mean over the batch."""

    name = "pd"
    requires = frozenset({"caption_concept", "caption_general", "caption_superclass"})
    families = frozenset({"sd1", "sdxl", "flux"})  # SDXL: its pooled text (forward)

    def __init__(
        self,
        weight: float = 0.002,
        target: Literal["superclass"] | float = "superclass",
        clip_model: str | None = None,
        text_feature: TextFeature = "auto",
    ) -> None:
        """
        Args:
            weight: ACCORD uses 0.001 to 0.003 (Appendix A.4).
            target: ``superclass`` (cos(f_s, f_g), the paper's default), or a number: 0 and -1
                are the paper's ablation (Table 6; lower favours text alignment).
            clip_model: the CLIP model whose projection to use (None: the one matching the
                diffusion model's text encoder; see ``PersonalizationModule.text_projection``).
            text_feature: ``clip``: CLIP's text projection of the (first) text encoder's
                last-layer end-of-text state (SD 1.x's f; on SDXL its CLIP ViT-L encoder);
                ``pooled``: the family's own pooled text embedding (SDXL's second encoder's
                projected feature); ``auto``: ``pooled`` where the family has one, else ``clip``.
        """
        super().__init__(weight)
        if isinstance(target, str):
            if target != "superclass":
                raise ValueError(f"PDLoss target must be 'superclass' or a number, got {target!r}.")
        elif not -1.0 <= float(target) <= 1.0:
            raise ValueError(f"PDLoss target is a cosine, so within [-1, 1]; got {target}.")
        self.target = target
        self.clip_model = clip_model
        self.text_feature = check_text_feature(text_feature)
        self.cache = FrozenPromptCache()
        self.token_ids: dict[str, torch.Tensor] = {}  # the concept phrases' ids, memoised

    def prepare(self, module: ModelView) -> None:
        """Load the projection before training, so a bad ``clip_model`` fails at start."""
        if chosen_text_feature(module, self.text_feature, "PDLoss") == "pooled":
            check_pooled_text_options("PDLoss", self.clip_model)
        else:
            module.text_projection(self.clip_model)

    def targets(self, batch: dict[str, Any]) -> list[str]:
        """The texts without concept token: each sample's c_g, then (superclass target) c_s."""
        texts = list(batch["caption_general"])
        if self.target == "superclass":
            texts += list(batch["caption_superclass"])
        return texts

    def prefill(self, module: ModelView, datamodule: Any) -> None:
        """Encode every c_g (and c_s) the DataModule can give, once, before training."""
        keys = ["caption_general"] + (["caption_superclass"] if self.target == "superclass" else [])
        self.cache.prefill(module, possible_texts(datamodule, keys))

    def text_requests(
        self, batch: dict[str, Any], module: ModelView
    ) -> list[TextRequest]:
        """The concept phrases with gradient, one row per sample even when the strings repeat
        (with VisualEncoder the token's vectors come from each sample's own photo), cut after
        their end-of-text (only the pooled feature is read); and the targets not yet cached."""
        phrases = list(batch["caption_concept"])
        if len(self.token_ids) > 1024:  # phrases are few; a bound all the same
            self.token_ids.clear()
        new = [p for p in dict.fromkeys(phrases) if p not in self.token_ids]
        if new:  # tokenizing costs as much as a small model's text pass: memoised
            self.token_ids.update(zip(new, module.tokenize(new)))
        ids = torch.stack([self.token_ids[p] for p in phrases])
        concept = TextRequest(trim_padding(ids, module.tokenizer.eos_token_id))
        return [concept, *self.cache.requests(module, self.targets(batch))]

    def forward(self, record: StepRecord, module: ModelView) -> torch.Tensor:
        (_, concept), *targets = self.requested_text(record, module)
        fresh = targets[0][1] if targets else None
        fixed = self.cache.encode(module, self.targets(record.batch), fresh)
        size = concept.hidden_states.shape[0]
        if chosen_text_feature(module, self.text_feature, "PDLoss") == "pooled":
            # SDXL: the second encoder's own projected end-of-text feature (CLIP space).
            features = torch.cat([concept.text_embeds.float(), fixed.text_embeds.float()])  # type: ignore[union-attr]
        else:
            eos = module.tokenizer.eos_token_id
            pooled = [e.clip_text_feature(eos).float() for e in (concept, fixed)]
            features = project(module.text_projection(self.clip_model), torch.cat(pooled))
        f_p, f_g, f_s = features[:size], features[size : 2 * size], features[2 * size :]
        return prior_decouple(f_p, f_g, f_s, self.target)
