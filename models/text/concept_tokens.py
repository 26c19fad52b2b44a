"""Concept tokens as a small parameter of their own, swapped into the text encoder's lookup.

The tokenizer gains one id per concept vector, but the 49408x768 embedding matrix is neither
resized nor trained: ids past the base vocabulary read from a small table instead. Only that
table receives gradients, so no weight decay or DDP all-reduce touches the frozen rows.
A concept with ``num_vectors`` > 1 is written as ``<v1>`` in prompts and expanded to
``<v1> <v1>_1 ...`` (diffusers' naming, so its textual-inversion loader reads our exports).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import CLIPTextModel, CLIPTokenizer, T5Tokenizer, T5TokenizerFast

from core.concept import ConceptSpec, token_pattern, vector_token_names

PIECE_TOKENIZERS = (T5Tokenizer, T5TokenizerFast)  # split words into pieces (FLUX's T5)


class ConceptEmbedding(nn.Module):
    """Token embedding lookup: base ids from the frozen matrix, new ids from ``vectors``."""

    def __init__(self, base: nn.Embedding, num_vectors: int, first_id: int | None = None) -> None:
        super().__init__()
        self.base = base
        # The first new id: the tokenizer's size, which T5's padded 32128-row matrix exceeds.
        self.base_vocab_size = base.num_embeddings if first_id is None else first_id
        self.vectors = nn.Parameter(torch.zeros(num_vectors, base.embedding_dim))

    @property
    def weight(self) -> torch.Tensor:
        """The frozen matrix, for code that reads ``token_embedding.weight`` (e.g. its dtype)."""
        return self.base.weight

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        is_new = input_ids >= self.base_vocab_size
        embeds = self.base(input_ids.clamp(max=self.base_vocab_size - 1))
        if not bool(is_new.any()):
            return embeds
        rows = (input_ids - self.base_vocab_size).clamp(min=0)
        new = self.vectors[rows].to(embeds.dtype)
        return torch.where(is_new.unsqueeze(-1), new, embeds)


class ConceptTokens:
    """Adds concept tokens to a tokenizer and text encoder and expands them in prompts."""

    def __init__(
        self,
        tokenizer: CLIPTokenizer,
        text_encoder: CLIPTextModel,
        concepts: list[ConceptSpec],
        num_vectors: int = 1,
    ) -> None:
        if num_vectors < 1:
            raise ValueError(f"num_vectors must be >= 1, got {num_vectors}.")
        if not concepts:
            raise ValueError("At least one concept is needed (a token and a class word).")
        self.tokenizer = tokenizer
        self.concepts = list(concepts)
        self.num_vectors = num_vectors
        self._check_tokens_are_new()
        init_ids = [self._initializer_ids(c.initializer, c) for c in self.concepts]
        names = [n for c in self.concepts for n in vector_token_names(c.token, num_vectors)]
        first = len(tokenizer)
        tokenizer.add_tokens(names)
        ids = tokenizer.convert_tokens_to_ids(names)
        self._check_each_reads_its_own_id(names, ids)
        base = text_encoder.get_input_embeddings()
        if ids != list(range(first, first + len(ids))) or first > base.num_embeddings:
            raise ValueError(
                f"New token ids {ids[:3]}... do not follow the tokenizer's {first} tokens within "
                f"the text encoder's {base.num_embeddings} embedding rows; the tokenizer and "
                "text encoder of this model disagree in size."
            )
        self.embedding = ConceptEmbedding(base, len(names), first_id=first)
        with torch.no_grad():
            init = torch.stack([base.weight[torch.tensor(i)].mean(dim=0) for i in init_ids])
            self.embedding.vectors.copy_(init.repeat_interleave(num_vectors, dim=0).float())
        text_encoder.set_input_embeddings(self.embedding)
        self._pattern = token_pattern([c.token for c in self.concepts])

    def _check_tokens_are_new(self) -> None:
        vocab = self.tokenizer.get_vocab()
        seen: set[str] = set()
        for concept in self.concepts:
            for name in vector_token_names(concept.token, self.num_vectors):
                # CLIP's vocabulary holds whole words as "dog</w>": a bare "dog" is taken too.
                if name in vocab or f"{name}</w>" in vocab or name in seen:
                    raise ValueError(
                        f"Concept token {name!r} already exists in the tokenizer; pick a token "
                        "that is not a word of the vocabulary, e.g. '<v1>' or 'sks-new'."
                    )
                seen.add(name)
                # After lowercasing ("Dog" -> dog</w>): the word itself, shadowed in every prompt.
                read = self.tokenizer(name, add_special_tokens=False).input_ids
                if len(read) == 1:
                    raise ValueError(
                        f"Concept token {name!r} reads as the existing token "
                        f"{self.tokenizer.convert_ids_to_tokens(read[0])!r} (the tokenizer "
                        "lowercases and normalises prompts); pick tokens that differ in more "
                        "than case from the vocabulary's words, e.g. '<v1>'."
                    )
            if len(self.tokenizer.tokenize(concept.token)) < 1:
                raise ValueError(f"Concept token {concept.token!r} is empty.")

    def _check_each_reads_its_own_id(self, names: list[str], ids: list[int]) -> None:
        """A prompt must read each new token as its own id. CLIP's tokenizer lowercases text
        first, so ``<v1>`` and ``<V1>`` (or ``Dog`` and the word ``dog``) read as one id: one
        of them would never train, and their A1111 files collide on a case-insensitive disk."""
        owners = dict(zip(ids, names))
        for name, own in zip(names, ids):
            read = self.tokenizer(name, add_special_tokens=False).input_ids
            if read != [own]:
                twins = [owners.get(i) or self.tokenizer.convert_ids_to_tokens(i) for i in read]
                raise ValueError(
                    f"Concept token {name!r} reads as the same token as "
                    f"{', '.join(map(repr, twins))} (the tokenizer lowercases and normalises "
                    "prompts); pick tokens that differ in more than case, e.g. '<v1>' and '<v2>'."
                )

    def _initializer_ids(self, word: str, concept: ConceptSpec) -> list[int]:
        """The initializer's token id; a sentencepiece tokenizer (T5) may split the word into
        pieces, whose mean is then the start (CLIP's must be one token, as the recipes say)."""
        ids = self.tokenizer(word, add_special_tokens=False).input_ids
        if isinstance(self.tokenizer, PIECE_TOKENIZERS) and ids:
            return ids
        if len(ids) != 1:
            raise ValueError(
                f"Initializer word {word!r} of concept {concept.token!r} is {len(ids)} tokens; it "
                "must be a single token of the tokenizer. Set initializer_word to a one-token word "
                "(the class word usually is)."
            )
        return ids

    def expand(self, prompt: str) -> str:
        """Write each multi-vector concept token as its n tokenizer entries."""
        if self.num_vectors == 1:
            return prompt
        return self._pattern.sub(
            lambda m: " ".join(vector_token_names(m.group(0), self.num_vectors)), prompt
        )

    def vectors_of(self, concept_index: int) -> torch.Tensor:
        """The learned vectors of one concept, shape (num_vectors, dim)."""
        start = concept_index * self.num_vectors
        return self.embedding.vectors[start : start + self.num_vectors]
