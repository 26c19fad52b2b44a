"""The superclass prompt: the sample's prompt with the concept token taken out (SPL, SuDe).

"a photo of a <v1> dog" becomes "a photo of a dog": the same words, so a loss that compares the
two (ClassDiffusion's SPL, SuDe's superclass pass) sees only what the token changes. The class
word must stay in the prompt, or the "superclass" prompt would name no class at all.
"""

from __future__ import annotations

import random
import re
from typing import TYPE_CHECKING, Any, ClassVar

from core.concept import ConceptSpec, token_pattern
from datamodules.extras.base import SampleExtra

if TYPE_CHECKING:
    from datamodules.personalization import PersonalizationDataModule


def has_word(text: str, word: str) -> bool:
    """Whether ``word`` (possibly several words) stands in ``text`` as whole words."""
    return re.search(rf"(?<!\w){re.escape(word)}(?!\w)", text) is not None


def superclass_prompt(prompt: str, concept: ConceptSpec, tokens: list[str]) -> str:
    """``prompt`` without any of the concept ``tokens``, whitespace tidied.

    Raises a ValueError naming the prompt and the class word when the class word is missing.
    """
    text = " ".join(token_pattern(tokens).sub(" ", prompt).split())
    if not has_word(text, concept.class_word):
        raise ValueError(
            f"Prompt {prompt!r} lacks the class word {concept.class_word!r} of concept "
            f"{concept.token!r}, so it has no superclass prompt. Write prompts with the concept "
            f"phrase ('{{}}' in a template becomes {concept.phrase!r}), or fix class_word."
        )
    return text


class SuperclassPrompts(SampleExtra):
    """Adds ``superclass_prompts``: the sample's prompt with its concept token removed."""

    provides: ClassVar[frozenset[str]] = frozenset({"superclass_prompts"})
    enumerable: ClassVar[bool] = True  # strings of the prompt, photo and concept only

    def __init__(self, concepts: list[ConceptSpec]) -> None:
        self.concepts = list(concepts)
        self.tokens = list(dict.fromkeys(c.token for c in self.concepts))

    @classmethod
    def from_datamodule(cls, datamodule: PersonalizationDataModule) -> SampleExtra:
        """Checks every template with every concept now, so a bad one fails before training."""
        # One entry per concept_data row (samples index it), also when subjects share a token.
        extra = cls([c.spec for c in datamodule.concept_data])
        for concept in extra.concepts:
            for template in getattr(datamodule, "templates", []):
                superclass_prompt(template.format(concept.phrase), concept, extra.tokens)
        return extra

    def add(self, sample: dict[str, Any], concept_index: int, rng: random.Random) -> None:
        concept = self.concepts[concept_index]
        sample["superclass_prompts"] = superclass_prompt(sample["prompts"], concept, self.tokens)
