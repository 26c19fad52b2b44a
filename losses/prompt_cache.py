"""Text encodings of prompts without concept tokens, cached while the text encoder is frozen.

The superclass prompt (SPL, SuDe), the general caption part and the empty prompt (DDLoss), and
the class word (PDLoss) do not change while only the concept tokens (and UNet weights) train,
so encoding them again every step is wasted time (docs/DESIGN.md, "Speed and memory"). The cache
is bypassed, and the prompts encoded afresh, whenever the text encoder itself trains or a
prompt holds a concept token. Encodings are constants to the losses: always without gradient.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import fields
from typing import TYPE_CHECKING, Any

import torch

from core.concept import token_pattern
from step.encoding import TextEncoding
from step.requests import TextRequest

if TYPE_CHECKING:
    from losses.model_view import ModelView


def text_encoder_frozen(
    module: ModelView, parameters: list[torch.nn.Parameter] | None = None
) -> bool:
    """True when the text encoders' only trainable weights are the concept-token vectors.

    ``parameters``: the text encoders' parameters listed once beforehand (walking the module
    tree every step costs more than the check itself on small models).
    """
    vectors = {id(t.embedding.vectors) for t in getattr(module, "encoder_concept_tokens", [])}
    if parameters is None:
        parameters = text_encoder_parameters(module)
    return all(id(p) in vectors for p in parameters if p.requires_grad)


def text_encoder_parameters(module: ModelView) -> list[torch.nn.Parameter]:
    """Every text encoder's parameters (SDXL's second one trains with the first)."""
    return [p for encoder in module.text_encoders for p in encoder.parameters()]


class FrozenPromptCache:
    """Least-recently-used cache of ``module.encode_text`` outputs, one entry per prompt."""

    def __init__(self, max_prompts: int = 256) -> None:
        self.max_prompts = max_prompts
        # prompt -> (hidden_states, input_ids, layer_states or None) of that one prompt
        self._entries: OrderedDict[str, dict[str, torch.Tensor]] = OrderedDict()
        # The text encoder's parameters, listed on first use (baselines add adapters in their
        # constructor, before any step); their requires_grad flags are read on every call.
        self._parameters: dict[int, list[torch.nn.Parameter]] = {}

    def _bypassed(self, module: ModelView, prompts: list[str]) -> bool:
        """True when these prompts' encodings may change between steps (nothing is kept)."""
        key = id(module.text_encoder)
        if key not in self._parameters:
            self._parameters[key] = text_encoder_parameters(module)
        if not text_encoder_frozen(module, self._parameters[key]):
            return True
        pattern = token_pattern([c.token for c in module.concepts])
        return any(pattern.search(p) for p in prompts)

    def missing(self, module: ModelView, prompts: list[str]) -> list[str]:
        """The distinct prompts ``encode`` would have to encode now, in first-seen order
        (all of them while the cache is bypassed)."""
        return self._missing(module, prompts)[0]

    @torch.no_grad()
    def prefill(
        self, module: ModelView, prompts: list[str] | None, chunk: int = 64
    ) -> None:
        """Encode ``prompts`` now (the constant texts a DataModule can give; None: unknown),
        up to ``max_prompts`` of them, so that steps find them cached from the first on."""
        if not prompts:
            return
        new, bypassed = self._missing(module, list(dict.fromkeys(prompts))[: self.max_prompts])
        if bypassed:
            return  # these encodings would not stay valid
        for start in range(0, len(new), chunk):
            self.encode(module, new[start : start + chunk])

    def requests(self, module: ModelView, prompts: list[str]) -> list[TextRequest]:
        """The missing prompts as a text request without gradient (none if all are cached),
        for a loss to fold into the step's text pass and hand back to ``encode`` as ``fresh``.
        Only for losses reading ``hidden_states`` (an id request has no per-layer states)."""
        missing = self.missing(module, prompts)
        return [TextRequest(module.tokenize(missing), with_grad=False)] if missing else []

    def _missing(self, module: ModelView, prompts: list[str]) -> tuple[list[str], bool]:
        """(``missing``, whether the cache is bypassed for these prompts)."""
        first = next(iter(self._entries.values()), None)
        if first is not None and first["hidden_states"].device != module.device:
            self._entries.clear()  # the module moved; cached tensors would be on the old device
        distinct = list(dict.fromkeys(prompts))
        if self._bypassed(module, distinct):
            return distinct, True
        return [p for p in distinct if p not in self._entries], False

    @torch.no_grad()
    def encode(
        self, module: ModelView, prompts: list[str], fresh: TextEncoding | None = None
    ) -> TextEncoding:
        """Encodings of ``prompts`` with no gradient, from the cache where valid.

        ``fresh``: the encodings of ``missing(module, prompts)``, in that order, if the caller
        already has them (e.g. from the step's own text pass); otherwise encoded here.
        """
        new, bypassed = self._missing(module, prompts)
        if new and fresh is None:
            fresh = module.encode_text(new)
        found = one_per_prompt(new, fresh) if new else {}
        if not bypassed:
            self._entries.update(found)
            for prompt in prompts:
                self._entries.move_to_end(prompt)
            found = self._entries
        entries = [found[p] for p in prompts]
        stacked = {
            name: torch.stack([e[name] for e in entries]) if isinstance(value, torch.Tensor)
            else value
            for name, value in entries[0].items()
        }  # fmt: skip
        while len(self._entries) > self.max_prompts:
            self._entries.popitem(last=False)
        return TextEncoding(**stacked)


def one_per_prompt(
    prompts: list[str], encoding: TextEncoding | None
) -> dict[str, dict[str, Any]]:
    """Split a batch encoding into detached rows by field (those the encoding has; a flag,
    not a tensor, is the same for every row)."""
    if encoding is None or encoding.hidden_states.shape[0] != len(prompts):
        rows = None if encoding is None else encoding.hidden_states.shape[0]
        raise ValueError(f"Expected the encodings of {len(prompts)} missing prompts, got {rows}.")
    # Every field, so a field added to TextEncoding is never silently dropped by the cache.
    values = {field.name: getattr(encoding, field.name) for field in fields(encoding)}
    present = {name: value for name, value in values.items() if value is not None}
    return {
        prompt: {
            name: value[i].detach() if isinstance(value, torch.Tensor) else value
            for name, value in present.items()
        }
        for i, prompt in enumerate(prompts)
    }


def possible_texts(
    datamodule: Any, keys: list[str], also: tuple[str, ...] = ()
) -> list[str] | None:
    """Every value the batch ``keys`` can take (plus ``also``), or None when any is unknown
    (a DataModule without ``possible_values``, or a key it cannot list)."""
    lister = getattr(datamodule, "possible_values", None)
    if lister is None:
        return None
    values = [lister(key) for key in keys]
    if any(v is None for v in values):
        return None
    return [text for listed in values for text in listed] + list(also)
