"""Where a concept token or a word sits in a tokenized prompt (analysis callbacks)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from core.concept import vector_token_names
from models.base import PersonalizationModule


def concept_token_ids(
    module: PersonalizationModule, concept_index: int = 0, tokenizer: Any = None
) -> list[int]:
    """The ids of one concept's vectors (``<v1>``, ``<v1>_1``, ...) in ``tokenizer`` (None:
    the module's first)."""
    concept = module.concepts[concept_index]
    names = vector_token_names(concept.token, module.concept_tokens.num_vectors)
    return list((tokenizer or module.tokenizer).convert_tokens_to_ids(names))


def word_token_ids(module: PersonalizationModule, word: str, tokenizer: Any = None) -> list[int]:
    """The ids a word tokenizes to on its own; CLIP's BPE and T5's whitespace-split pieces
    split words independently, so the same ids appear, in order, wherever the word stands."""
    ids = (tokenizer or module.tokenizer)(word, add_special_tokens=False).input_ids
    if not ids:
        raise ValueError(f"{word!r} tokenizes to nothing; name a real word of the prompt.")
    return list(ids)


def find_positions(
    input_ids: Sequence[int], token_ids: Sequence[int], what: str, start: int = 0
) -> list[int]:
    """Positions of the first run of ``token_ids`` in ``input_ids`` at or after ``start``."""
    ids, run = list(input_ids), list(token_ids)
    for first in range(start, len(ids) - len(run) + 1):
        if ids[first : first + len(run)] == run:
            return list(range(first, first + len(run)))
    raise ValueError(
        f"{what} does not occur in the tokenized prompt (ids {ids[:12]}...); check that the "
        "prompt contains it as a whole word and is not truncated."
    )
