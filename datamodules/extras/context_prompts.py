"""Batch extra ``context_prompts``: one context-rich prompt per sample, with its concept phrase.

Built when a regularizer requires the key (the MLM loss). Each concept draws from its own pool:
the DataModule's ``context_prompts.file`` if set (every line, with "{}" for the concept
phrase), else the generated set of the concept's category (living / object from its class
word, or ``context_prompts.category``) minus the held-out share.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any, ClassVar

from core.options import clear_null_strings
from datamodules.extras.base import SampleExtra
from prompts.context import (
    category_of,
    check_category,
    generate_context_templates,
    read_prompt_file,
    split_held_out,
)

if TYPE_CHECKING:
    from datamodules.personalization import PersonalizationDataModule

POOL_SIZE = 10_000  # the paper's order of magnitude per category


@dataclass(frozen=True)
class ContextPromptOptions:
    """Where the context-rich prompts come from (DataModule option ``context_prompts``).

    Attributes:
        file: one prompt per line with "{}" for the concept phrase; None: the generated set
            (prompts/context.py).
        category: ``living`` or ``object`` for the generated set; None decides from each
            class word (``category_of``).
    """

    file: str | None = None
    category: str | None = None

    def __post_init__(self) -> None:
        clear_null_strings(self, "file", "category")
        if self.category is not None:
            check_category(self.category)


@lru_cache(maxsize=8)
def training_templates(category: str, seed: int) -> tuple[str, ...]:
    """The generated templates of a category that are not held out."""
    return tuple(split_held_out(generate_context_templates(category, POOL_SIZE, seed))[0])


class ContextPrompts(SampleExtra):
    """Adds ``context_prompts``: a rich prompt holding the sample's concept phrase."""

    provides: ClassVar[frozenset[str]] = frozenset({"context_prompts"})

    def __init__(self, pools: list[tuple[str, ...]], phrases: list[str]) -> None:
        self.pools, self.phrases = pools, phrases

    @classmethod
    def from_datamodule(cls, datamodule: PersonalizationDataModule) -> ContextPrompts:
        concepts = datamodule.concepts
        options: ContextPromptOptions = datamodule.context_prompts
        if options.file is not None:
            pools = [tuple(read_prompt_file(options.file))] * len(concepts)
        else:
            forced = options.category
            categories = [
                check_category(forced) if forced else category_of(c.class_word) for c in concepts
            ]
            pools = [training_templates(category, datamodule.seed) for category in categories]
        return cls(pools, [c.phrase for c in concepts])

    def pools_as_texts(self) -> list[list[str]]:
        """Each concept's whole pool with its phrase in place (what ``add`` draws from)."""
        return [
            [template.format(phrase) for template in pool]
            for pool, phrase in zip(self.pools, self.phrases, strict=True)
        ]

    def add(self, sample: dict[str, Any], concept_index: int, rng: random.Random) -> None:
        template = rng.choice(self.pools[concept_index])
        sample["context_prompts"] = template.format(self.phrases[concept_index])
