"""ACCORD's Prior Decouple Loss (PDLoss), ``pd``: Eq. (14) of the paper.

    L_pd = E_{c_g} | cos(f_p, f_g) - target |,   target = cos(f_s, f_g)  (``superclass``)
                                                          or a constant 0 / -1 (Table 6)

f = CLIP's text projection of the pooled (end-of-text) feature of a text: f_p of the concept
phrase c_p ("<v1> backpack"), f_s of its superclass c_s ("backpack"), f_g of the caption's
general part c_g (the caption without the concept phrase). Each sample contributes its own
caption's c_g, so the batch mean is a sample of the expectation over c_g.

Gradient reaches f_p only (the concept tokens, and a trained text encoder); f_s and f_g are
targets, encoded without gradient and cached while the text encoder is frozen.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from losses.base import Regularizer
from losses.prompt_cache import FrozenPromptCache
from models.base import PersonalizationModule
from models.step_record import StepRecord
from models.text_encoding import TextEncoding
from models.text_projection import project


def encode_for_pooling(
    module: PersonalizationModule,
    prompts: list[str],
    token_ids: dict[str, torch.Tensor] | None = None,
) -> TextEncoding:
    """``encode_text`` for pooled features only, on ids cut after the last end-of-text token.

    CLIP's text transformer is causal, so the end-of-text feature does not depend on the
    padding after it: a short phrase costs a few positions instead of 77. ``token_ids``
    memoises each prompt's ids (tokenizing costs as much as a tiny model's text pass). A
    baseline that overrides ``encode_text`` (XTI's per-layer path) gets its own method, uncut.
    """
    if type(module).encode_text is not PersonalizationModule.encode_text:
        return module.encode_text(prompts)
    memo = {} if token_ids is None else token_ids
    new = [p for p in dict.fromkeys(prompts) if p not in memo]
    if new:
        for prompt, ids in zip(new, module.tokenize(new)):
            memo[prompt] = ids
    input_ids = torch.stack([memo[p] for p in prompts])
    last = int((input_ids == module.tokenizer.eos_token_id).int().argmax(dim=1).max())
    return module.encode_token_ids(input_ids[:, : last + 1])


class PriorDecoupleLoss(Regularizer):
    """|cos(f_p, f_g) - cos(f_s, f_g)| on CLIP-projected text features, mean over the batch."""

    name = "pd"
    requires = frozenset({"caption_concept", "caption_general", "caption_superclass"})

    def __init__(
        self,
        weight: float = 0.002,
        target: Literal["superclass"] | float = "superclass",
        clip_model: str | None = None,
    ) -> None:
        """
        Args:
            weight: ACCORD uses 0.001 to 0.003 (Appendix A.4).
            target: ``superclass`` (cos(f_s, f_g), the paper's default), or a number: 0 and -1
                are the paper's ablation (Table 6; lower favours text alignment).
            clip_model: the CLIP model whose projection to use (None: the one matching the
                diffusion model's text encoder; see ``PersonalizationModule.text_projection``).
        """
        super().__init__(weight)
        if isinstance(target, str):
            if target != "superclass":
                raise ValueError(f"PDLoss target must be 'superclass' or a number, got {target!r}.")
        elif not -1.0 <= float(target) <= 1.0:
            raise ValueError(f"PDLoss target is a cosine, so within [-1, 1]; got {target}.")
        self.target = target
        self.clip_model = clip_model
        self.cache = FrozenPromptCache()
        self.token_ids: dict[str, torch.Tensor] = {}  # the concept phrases' ids, memoised

    def prepare(self, module: PersonalizationModule) -> None:
        """Load the projection before training, so a bad ``clip_model`` fails at start."""
        module.text_projection(self.clip_model)

    def forward(self, record: StepRecord, module: PersonalizationModule) -> torch.Tensor:
        batch = record.batch
        size = len(batch["caption_concept"])
        # The concept phrases with gradient, one per sample even when the strings repeat: with
        # VisualEncoder the token's vectors come from each sample's own photo.
        if len(self.token_ids) > 1024:  # phrases are few; a bound all the same
            self.token_ids.clear()
        concept = encode_for_pooling(module, list(batch["caption_concept"]), self.token_ids)
        # The targets' texts (no concept token): without gradient, cached.
        targets = list(batch["caption_general"])
        if self.target == "superclass":
            targets += list(batch["caption_superclass"])
        fixed = self.cache.encode(module, targets)
        eos = module.tokenizer.eos_token_id
        pooled = torch.cat([concept.pooled(eos).float(), fixed.pooled(eos).float()])
        features = project(module.text_projection(self.clip_model), pooled)
        f_p, f_g, f_s = features[:size], features[size : 2 * size], features[2 * size :]
        cos_pg = F.cosine_similarity(f_p, f_g, dim=-1)
        if self.target == "superclass":
            target = F.cosine_similarity(f_s, f_g, dim=-1)
        else:
            target = torch.full_like(cos_pg, float(self.target))
        return (cos_pg - target).abs().mean()
