"""Text encodings of prompts without concept tokens, cached while the text encoder is frozen.

The superclass prompt (SPL, SuDe), the general caption part and the empty prompt (DDLoss), and
the class word (PDLoss) do not change while only the concept tokens (and UNet weights) train,
so encoding them again every step is wasted time (DESIGN.md, "Speed and memory"). The cache
is bypassed, and the prompts encoded afresh, whenever the text encoder itself trains or a
prompt holds a concept token. Encodings are constants to the losses: always without gradient.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING

import torch

from datamodules.extras.superclass import token_pattern
from models.text_encoding import TextEncoding

if TYPE_CHECKING:
    from models.base import PersonalizationModule


def text_encoder_frozen(
    module: PersonalizationModule, parameters: list[torch.nn.Parameter] | None = None
) -> bool:
    """True when the text encoder's only trainable weights are the concept-token vectors.

    ``parameters``: the text encoder's parameters listed once beforehand (walking the module
    tree every step costs more than the check itself on small models).
    """
    tokens = getattr(module, "concept_tokens", None)
    vectors = tokens.embedding.vectors if tokens is not None else None
    if parameters is None:
        parameters = list(module.text_encoder.parameters())
    return all(p is vectors for p in parameters if p.requires_grad)


class FrozenPromptCache:
    """Least-recently-used cache of ``module.encode_text`` outputs, one entry per prompt."""

    def __init__(self, max_prompts: int = 256) -> None:
        self.max_prompts = max_prompts
        # prompt -> (hidden_states, input_ids, layer_states or None) of that one prompt
        self._entries: OrderedDict[str, tuple[torch.Tensor, ...]] = OrderedDict()
        # The text encoder's parameters, listed on first use (baselines add adapters in their
        # constructor, before any step); their requires_grad flags are read on every call.
        self._parameters: dict[int, list[torch.nn.Parameter]] = {}

    @torch.no_grad()
    def encode(self, module: PersonalizationModule, prompts: list[str]) -> TextEncoding:
        """Encodings of ``prompts`` with no gradient, from the cache where valid."""
        pattern = token_pattern([c.token for c in module.concepts])
        key = id(module.text_encoder)
        if key not in self._parameters:
            self._parameters[key] = list(module.text_encoder.parameters())
        frozen = text_encoder_frozen(module, self._parameters[key])
        if not frozen or any(pattern.search(p) for p in prompts):
            return module.encode_text(list(prompts))
        if self._entries and next(iter(self._entries.values()))[0].device != module.device:
            self._entries.clear()  # the module moved; cached tensors would be on the old device
        new = list(dict.fromkeys(p for p in prompts if p not in self._entries))
        if new:
            encoded = module.encode_text(new)
            for i, prompt in enumerate(new):
                layers = encoded.layer_states
                self._entries[prompt] = (
                    encoded.hidden_states[i],
                    encoded.input_ids[i],
                    *(() if layers is None else (layers[i],)),
                )
        for prompt in prompts:
            self._entries.move_to_end(prompt)
        entries = [self._entries[p] for p in prompts]
        stacked = [torch.stack(parts) for parts in zip(*entries)]
        while len(self._entries) > self.max_prompts:
            self._entries.popitem(last=False)
        return TextEncoding(*stacked)
