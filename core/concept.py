"""The concept a run learns: its placeholder token, class word, initializer word and kind.

Data (prompts, class images) and model (token vectors) both speak of concepts, so the type lives
here, below both, and neither imports the other for it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# What a concept is. An object or a living subject trains from its photos with subject
# prompts; a style from images in that style with style prompts ("a painting in the style of
# <v1> style"), and the losses that assume a subject in the image (prior preservation's class
# images, CLIF's segmentation, the subject mask) refuse it.
CONCEPT_KINDS = ("object", "living", "style")
STYLE_CLASS_WORD = "style"  # a style's default superclass: its phrase is "<v1> style"


@dataclass(frozen=True)
class ConceptSpec:
    """One concept to learn: its placeholder token, class word and initializer word, and its
    kind (None: an object or living subject, as its class word says)."""

    token: str
    class_word: str
    initializer_word: str | None = None
    kind: str | None = None

    def __post_init__(self) -> None:
        if self.kind is not None and self.kind not in CONCEPT_KINDS:
            raise ValueError(
                f"concept_kind {self.kind!r} is not one of {list(CONCEPT_KINDS)} (null: from "
                "the class word)."
            )
        if not self.token or any(ch.isspace() for ch in self.token):
            raise ValueError(
                f"Concept token {self.token!r} must be one word without spaces (it becomes one "
                "tokenizer entry), e.g. '<v1>'."
            )

    @property
    def initializer(self) -> str:
        return self.initializer_word or self.class_word

    @property
    def is_style(self) -> bool:
        return self.kind == "style"

    @property
    def phrase(self) -> str:
        """The concept as it stands in a prompt: "<v1> dog" (a style: "<v1> style", its class
        word being its superclass)."""
        return f"{self.token} {self.class_word}"


def vector_token_names(token: str, num_vectors: int) -> list[str]:
    """Tokenizer entries for one concept: the token itself, then token_1 ... token_{n-1}."""
    return [token] + [f"{token}_{i}" for i in range(1, num_vectors)]


def token_pattern(tokens: list[str]) -> re.Pattern[str]:
    """Matches a concept token standing alone, with the boundaries ConceptTokens uses."""
    return re.compile("|".join(rf"(?<![\w<>]){re.escape(t)}(?![\w<>])" for t in tokens))
