"""The concept a run learns: its placeholder token, class word and initializer word.

Data (prompts, class images) and model (token vectors) both speak of concepts, so the type lives
here, below both, and neither imports the other for it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class ConceptSpec:
    """One concept to learn: its placeholder token, class word and initializer word."""

    token: str
    class_word: str
    initializer_word: str | None = None

    def __post_init__(self) -> None:
        if not self.token or any(ch.isspace() for ch in self.token):
            raise ValueError(
                f"Concept token {self.token!r} must be one word without spaces (it becomes one "
                "tokenizer entry), e.g. '<v1>'."
            )

    @property
    def initializer(self) -> str:
        return self.initializer_word or self.class_word

    @property
    def phrase(self) -> str:
        """The concept as it stands in a prompt: "<v1> dog"."""
        return f"{self.token} {self.class_word}"


def vector_token_names(token: str, num_vectors: int) -> list[str]:
    """Tokenizer entries for one concept: the token itself, then token_1 ... token_{n-1}."""
    return [token] + [f"{token}_{i}" for i in range(1, num_vectors)]


def token_pattern(tokens: list[str]) -> re.Pattern[str]:
    """Matches a concept token standing alone, with the boundaries ConceptTokens uses."""
    return re.compile("|".join(rf"(?<![\w<>]){re.escape(t)}(?![\w<>])" for t in tokens))
