"""Prompts with a concept slot and a named context word, shared by the analysis callbacks."""

from __future__ import annotations

# Template ("{}" takes "<v1> dog", or "dog" for the prompt without the concept) -> context word.
DEFAULT_CONTEXT_PROMPTS: dict[str, str] = {
    "a {} on the beach": "beach",
    "a {} in the jungle": "jungle",
    "a {} in the snow": "snow",
    "a {} on a city street": "street",
    "a {} in the forest": "forest",
    "a {} on top of a mountain": "mountain",
    "a {} floating in the water": "water",
    "a {} on the grass": "grass",
    "a {} wearing a santa hat": "hat",
    "a {} next to a tree": "tree",
}


def check_context_prompts(prompts: dict[str, str]) -> dict[str, str]:
    """Each template needs a '{}' and must contain its context word; fails before training."""
    if not prompts:
        raise ValueError("No context prompts given: map prompt templates to context words.")
    for template, word in prompts.items():
        if template.count("{}") != 1:
            raise ValueError(
                f"Prompt {template!r} needs exactly one '{{}}' for the concept phrase."
            )
        if word not in template.replace("{}", " ").split():
            raise ValueError(
                f"Context word {word!r} is not a whole word of prompt {template!r}; map each "
                "template to a word it contains, e.g. {'a {} on the beach': 'beach'}."
            )
    return dict(prompts)
