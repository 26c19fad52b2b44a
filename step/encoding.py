"""The prompt -> encoder-states path, concept tokens injected."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase


def tokenize_padded(
    tokenizer: PreTrainedTokenizerBase, prompts: list[str], device: torch.device | str
) -> torch.Tensor:
    """Prompt ids padded (and cut) to the tokenizer's length, as Stable Diffusion pipelines do."""
    return tokenizer(
        prompts,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids.to(device)


@dataclass
class TextEncoding:
    """Output of `PersonalizationModule.encode_text`.

    hidden_states: (B, L, D), what the UNet cross-attends to; input_ids: (B, L), so that a loss
    can find the concept token, the class word or the end-of-text position.
    layer_states: set by baselines whose UNet layers each read their own text states (XTI/P+):
    (B, n_layers * L, D), the layers' states packed along the sequence; ``hidden_states`` is then
    one documented layer's. Give ``conditioning`` (not ``hidden_states``) to ``predict_noise``.
    text_embeds: (B, P), the pooled text embedding of families that condition on one (SDXL:
    the second encoder's projected end-of-text feature); None for SD 1.x.
    clip_pooled: (B, D1), where a family's conditioning states are not the first (CLIP)
    encoder's last layer (SDXL: penultimate states): that encoder's final, layer-normed state
    at the real end-of-text, what CLIP's text projection applies to (CLIF's text side on SDXL).
    clip_states: (B, L, D1), likewise that encoder's last-layer states at every position (MLM's
    contextualizer reads them on SDXL); None where ``hidden_states`` are them (SD 1.x).
    states_follow_ids: whether ``hidden_states`` has one row per position of ``input_ids``
    (False on FLUX: they are T5's, over T5's own tokens, and positions found in ``input_ids``
    index ``clip_states`` instead; see `token_states`).
    """

    hidden_states: torch.Tensor
    input_ids: torch.Tensor
    layer_states: torch.Tensor | None = None
    text_embeds: torch.Tensor | None = None
    clip_pooled: torch.Tensor | None = None
    clip_states: torch.Tensor | None = None
    states_follow_ids: bool = True

    @property
    def token_states(self) -> torch.Tensor:
        """(B, L, D) states whose positions are ``input_ids``' (the conditioning where it
        follows the ids, else the first encoder's last layer)."""
        if self.states_follow_ids:
            return self.hidden_states
        assert self.clip_states is not None, "states over other tokens need clip_states"
        return self.clip_states

    @property
    def conditioning(self) -> torch.Tensor:
        """What the UNet should be given for these prompts (per-layer states when there are)."""
        return self.hidden_states if self.layer_states is None else self.layer_states

    def per_layer(self) -> torch.Tensor:
        """(n_layers, B, L, D): the states each UNet layer reads (one entry when all share)."""
        if self.layer_states is None:
            return self.token_states.unsqueeze(0)
        batch, total, dim = self.layer_states.shape
        length = self.input_ids.shape[1]
        return self.layer_states.view(batch, total // length, length, dim).permute(1, 0, 2, 3)

    def eos_positions(self, eos_token_id: int) -> torch.Tensor:
        """Index of the first end-of-text token in each prompt, shape (B,)."""
        return (self.input_ids == eos_token_id).int().argmax(dim=-1)

    @staticmethod
    def stacked(encodings: list[TextEncoding]) -> TextEncoding:
        """Several encodings of one width as one batch, rows in order (per-layer states and
        pooled embeddings where every part has them)."""

        def joined(parts: list[torch.Tensor | None]) -> torch.Tensor | None:
            return None if any(p is None for p in parts) else torch.cat(parts)  # type: ignore[arg-type]

        return TextEncoding(
            torch.cat([e.hidden_states for e in encodings]),
            torch.cat([e.input_ids for e in encodings]),
            layer_states=joined([e.layer_states for e in encodings]),
            text_embeds=joined([e.text_embeds for e in encodings]),
            clip_pooled=joined([e.clip_pooled for e in encodings]),
            clip_states=joined([e.clip_states for e in encodings]),
            states_follow_ids=all(e.states_follow_ids for e in encodings),
        )

    def clip_text_states(self) -> torch.Tensor:
        """The first (CLIP) encoder's last-layer states, (B, L, D1)."""
        return self.hidden_states if self.clip_states is None else self.clip_states

    def clip_text_feature(self, eos_token_id: int) -> torch.Tensor:
        """The first encoder's last-layer state at the end-of-text, (B, D1): what CLIP's text
        projection applies to (``clip_pooled`` where the conditioning is not that layer)."""
        return self.pooled(eos_token_id) if self.clip_pooled is None else self.clip_pooled

    def pooled(self, eos_token_id: int) -> torch.Tensor:
        """Hidden state at the real end-of-text position, shape (B, D)."""
        rows = torch.arange(self.input_ids.shape[0], device=self.input_ids.device)
        return self.token_states[rows, self.eos_positions(eos_token_id)]
