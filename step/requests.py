"""Text a regularizer needs encoded each step, folded into the step's own text-encoder call.

PDLoss encodes the concept phrase and MLM its masked rich prompts every step, with gradient to
the concept tokens. On a small text encoder each extra call costs more in fixed overhead (a
call, a backward graph) than in arithmetic, so the base module stacks these rows under the
step's prompts and runs the text encoder once (`PersonalizationModule.encode_step_text`).
A request's rows are padded to the stacked width after their own end-of-text: CLIP's text
encoder is causal, so a row's states up to its end-of-text do not depend on what follows, and
the encoding handed back is cut to the request's own width.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from step.encoding import TextEncoding


class TokenIdEncoder(Protocol):
    """The two text paths a request is encoded through (the module's; see
    losses/model_view.py for the whole view a regularizer gets)."""

    def encode_token_ids(
        self, input_ids: torch.Tensor, extra_vectors: torch.Tensor | None = None
    ) -> TextEncoding:
        """Token ids through the text path (``extra_vectors``: ids past the vocabulary)."""
        ...

    def encode_token_variants(
        self, input_ids: torch.Tensor, extra_vectors: torch.Tensor | None = None
    ) -> TextEncoding:
        """`encode_token_ids` once per set of concept vectors the UNet reads."""
        ...


@dataclass(frozen=True)
class TextRequest:
    """Token ids (n, L) to encode, as ``PersonalizationModule.tokenize`` makes them (possibly
    cut after the end-of-text, or with tokens replaced).

    extra_vectors (k, D): ids ``len(tokenizer) + j`` embed as row j for these rows only (MLM's
    frozen ``[MASK]``). with_grad False: the encoding comes back detached (targets, cache fills).
    note: anything the requester wants back with the encoding (e.g. MLM's masked positions).
    layer_variants: encode one copy of the rows per set of concept vectors the UNet reads
    (`encode_token_variants`: XTI/P+ one per cross-attention layer, layer-major, rows
    l * n + i; one copy elsewhere), so a text-side loss trains every layer's token.
    Rows holding a concept token come one per batch sample, in batch order (VisualEncoder
    gives row j the vectors of sample j mod batch size).
    """

    input_ids: torch.Tensor
    extra_vectors: torch.Tensor | None = None
    with_grad: bool = True
    note: Any = None
    layer_variants: bool = False


def encode_request(module: TokenIdEncoder, request: TextRequest) -> TextEncoding:
    """One request on its own (one text-encoder call), for paths that cannot fold."""
    encode = module.encode_token_variants if request.layer_variants else module.encode_token_ids
    with torch.set_grad_enabled(request.with_grad and torch.is_grad_enabled()):
        return encode(request.input_ids, request.extra_vectors)


def stack_requests(
    main_ids: torch.Tensor, requests: list[TextRequest], pad_token_id: int, first_extra_id: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(ids of the main rows then every request's, padded to the main width; their extra
    vectors, each request's extra ids shifted past the previous requests' vectors)."""
    width = main_ids.shape[1]
    rows, vectors, offset = [main_ids], [], 0
    for request in requests:
        ids = request.input_ids
        if ids.shape[1] > width:
            raise ValueError(
                f"A text request is {ids.shape[1]} tokens wide, wider than the step's prompts "
                f"({width}); cut it to the tokenizer's max_length."
            )
        if request.extra_vectors is not None:
            ids = torch.where(ids >= first_extra_id, ids + offset, ids)
            vectors.append(request.extra_vectors.reshape(-1, request.extra_vectors.shape[-1]))
            offset += vectors[-1].shape[0]
        rows.append(F.pad(ids, (0, width - ids.shape[1]), value=pad_token_id))
    return torch.cat(rows), (torch.cat(vectors) if vectors else None)


def split_requests(
    stacked: TextEncoding, main_rows: int, requests: list[TextRequest]
) -> tuple[TextEncoding, list[TextEncoding]]:
    """The stacked call's encoding back into the main rows' and each request's own (per-row
    outputs cut to the rows, per-position ones also to the request's width)."""
    pooled, clip_pooled, clip_states = stacked.text_embeds, stacked.clip_pooled, stacked.clip_states
    main = TextEncoding(
        stacked.hidden_states[:main_rows],
        stacked.input_ids[:main_rows],
        text_embeds=None if pooled is None else pooled[:main_rows],
        clip_pooled=None if clip_pooled is None else clip_pooled[:main_rows],
        clip_states=None if clip_states is None else clip_states[:main_rows],
        states_follow_ids=stacked.states_follow_ids,
    )
    parts, start = [], main_rows
    for request in requests:
        rows, width = request.input_ids.shape
        hidden = stacked.hidden_states[start : start + rows]
        if stacked.states_follow_ids:  # (FLUX's T5 states have their own length)
            hidden = hidden[:, :width]
        own = [None if x is None else x[start : start + rows] for x in (pooled, clip_pooled)]
        states = None if clip_states is None else clip_states[start : start + rows, :width]
        if not request.with_grad:
            hidden, own = hidden.detach(), [None if x is None else x.detach() for x in own]
            states = None if states is None else states.detach()
        parts.append(
            TextEncoding(
                hidden, request.input_ids, None, *own, clip_states=states,
                states_follow_ids=stacked.states_follow_ids,
            )  # fmt: skip
        )
        start += rows
    return main, parts
