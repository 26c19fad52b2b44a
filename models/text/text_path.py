"""The prompt -> encoder-states path of every baseline, concept tokens injected.

Mixed into `PersonalizationModule` (``self.tokenizer``, ``self.text_encoders``,
``self.concept_tokens``, ``self.family`` and ``self.device`` are the module's; the family turns
token ids into the denoiser's conditioning, backbones/). These are documented methods a
regularizer may call; the step's prompts and the regularizers' text requests share one
text-encoder call through ``encode_step_text``.
"""

from __future__ import annotations

import copy
from contextlib import ExitStack

import torch
from torch import nn
from transformers import CLIPTextModel

from models.text.extra_vectors import extra_vectors_in
from models.text.text_cache import moved
from step.encoding import TextEncoding, tokenize_padded
from step.requests import (
    TextRequest,
    encode_request,
    split_requests,
    stack_requests,
)


class TextPathMixin:
    """``encode_text``, ``tokenize``, ``encode_token_ids``, ``encode_step_text``, and the text
    encoder as a plain model for exports (``standalone_text_encoder``)."""

    def standalone_text_encoder(self, index: int = 0) -> CLIPTextModel:
        """A plain copy of text encoder ``index`` whose embedding matrix holds the concept rows.

        The live one reads new ids through `ConceptEmbedding`, which a saved model must not
        contain: diffusers would neither know the wrapper nor size the matrix to the tokenizer.
        """
        embedding = self.encoder_concept_tokens[index].embedding
        plain = copy.deepcopy(self.text_encoders[index])
        base = embedding.base.weight.detach()
        rows = embedding.vectors.detach().to(base.dtype)
        # The concept ids start at the tokenizer's size: past SD's matrix, inside T5's (its
        # 32,128 rows hold 32,100 tokens), so the rows go to their ids, growing the matrix.
        first = embedding.base_vocab_size
        size = max(base.shape[0], first + rows.shape[0])
        merged_rows = torch.cat([base, base.new_zeros(size - base.shape[0], base.shape[1])])
        merged_rows[first : first + rows.shape[0]] = rows
        merged = nn.Embedding.from_pretrained(merged_rows, freeze=False)
        plain.set_input_embeddings(merged)
        plain.config.vocab_size = merged.num_embeddings
        return plain

    def encode_text(self, prompts: list[str]) -> TextEncoding:
        """Encode prompts with the concept tokens injected (gradients reach trained vectors);
        under ``memory.cache_text`` from the cache of the frozen text path."""
        if self.text_cache is not None:
            return self.text_cache.encode_prompts(self, prompts)
        return self.encode_token_ids(self.tokenize(prompts))

    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        """Padded token ids (B, max_length) on the module's device, concept tokens expanded."""
        expanded = [self.concept_tokens.expand(p) for p in prompts]
        return tokenize_padded(self.tokenizer, expanded, self.device)

    def encode_token_ids(
        self, input_ids: torch.Tensor, extra_vectors: torch.Tensor | None = None
    ) -> TextEncoding:
        """The text path of `encode_text` from token ids (MLM masks tokens, not words).

        ``extra_vectors`` (n, D): for this call, the ids ``len(self.tokenizer) + k`` embed as
        row k (MLM's frozen ``[MASK]`` vector), swapped into the lookup like concept tokens.
        They are the first encoder's (CLIP ViT-L on SDXL, what MLM's contextualizer reads); a
        further encoder embeds those ids as zero vectors, so its states stay defined.
        """
        encoders = self.text_encoders
        where = encoders[0].get_input_embeddings().weight.device
        if where != input_ids.device:  # memory.cache_text: the encoders stay on the CPU
            vectors = None if extra_vectors is None else extra_vectors.to(where)
            encoded = self.encode_token_ids(input_ids.to(where), vectors)
            return moved(encoded, input_ids.device)
        pad_ids = [getattr(self, name).pad_token_id for name in self.family.tokenizer_names]
        end_id = self.tokenizer.eos_token_id
        tokenizers = [getattr(self, name) for name in self.family.tokenizer_names]
        if extra_vectors is None:
            return self.family.encode_ids(encoders, input_ids, pad_ids, end_id, tokenizers)
        first_id = len(self.tokenizer)
        with ExitStack() as swapped:
            swapped.enter_context(extra_vectors_in(encoders[0], first_id, extra_vectors))
            for encoder in encoders[1:]:
                zeros = extra_vectors.new_zeros(len(extra_vectors), encoder.config.hidden_size)
                swapped.enter_context(extra_vectors_in(encoder, first_id, zeros))
            return self.family.encode_ids(encoders, input_ids, pad_ids, end_id, tokenizers)

    def encode_token_variants(
        self, input_ids: torch.Tensor, extra_vectors: torch.Tensor | None = None
    ) -> TextEncoding:
        """`encode_token_ids` once per set of concept vectors the UNet reads, stacked
        variant-major (rows v * B + i). One set here; XTI/P+ has one per cross-attention layer,
        so text-side losses that ask (MLM, ``layer_variants``) train every layer's token."""
        return self.encode_token_ids(input_ids, extra_vectors)

    def encode_step_text(
        self, prompts: list[str], requests: list[TextRequest]
    ) -> tuple[TextEncoding, list[TextEncoding]]:
        """The step's prompts and the regularizers' text requests, in one text-encoder call.

        Requests without gradient are stacked last (they hold no concept token), so the rows
        that do keep their batch order. A baseline with its own text path (XTI's per-layer
        encoder) encodes each request on its own through ``encode_token_ids`` instead.
        """
        own_path = (
            type(self).encode_text is not TextPathMixin.encode_text
            or type(self).encode_token_ids is not TextPathMixin.encode_token_ids
            or self.text_cache is not None  # the prompts come from the cache
        )
        if not requests or own_path:
            return self.encode_text(prompts), [encode_request(self, r) for r in requests]
        order = sorted(range(len(requests)), key=lambda i: not requests[i].with_grad)
        ordered = [requests[i] for i in order]
        main_ids = self.tokenize(prompts)
        pad = self.tokenizer.pad_token_id
        pad = self.tokenizer.eos_token_id if pad is None else pad  # CLIP pads with end-of-text
        ids, vectors = stack_requests(main_ids, ordered, pad, len(self.tokenizer))
        main, parts = split_requests(self.encode_token_ids(ids, vectors), len(prompts), ordered)
        by_request = dict(zip(order, parts))
        return main, [by_request[i] for i in range(len(requests))]
