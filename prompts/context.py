"""The context-rich prompt set of the diverse-context paper: generated, or read from a file.

Prompts are templates with one "{}" for the concept phrase ("a photo of a {} wearing a red
scarf, at sunset" -> "a photo of a <v1> dog wearing ..."). The generator combines our own word
lists (`prompts.context_words`) along a few sentence patterns per category; the space holds
millions of prompts, of which ``generate_context_templates`` draws ``count`` distinct ones,
deterministic by seed. The category (living or object) follows the class word, see
`category_of`. A fixed ~5% of all templates (by a hash of the text, whatever the seed or count)
is held out, so that an evaluation can use prompts that training never saw.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Iterable
from pathlib import Path

from core.errors import read_utf8_text
from prompts import context_words as words
from prompts.templates import check_templates

CATEGORIES = ("living", "object")
HELD_OUT_MODULUS = 20  # templates whose crc32 % 20 == 0 are held out (~5%)

# Sentence patterns: "opener" carries "{}"; the other slots name word lists.
_PATTERNS: dict[str, tuple[tuple[str, ...], ...]] = {
    "living": (
        ("opener", "action", "place"),
        ("opener", "attire", "place"),
        ("opener", "attire", ",", "action", "place"),
        ("opener", "action", "companion"),
        ("opener", "place", ",", "style"),
        ("opener", "attire", "place", ",", "lighting"),
        ("opener", "action", "place", "lighting"),
        ("opener", "companion", "place"),
        ("opener", "attire", ",", "style"),
    ),
    "object": (
        ("opener", "placement"),
        ("opener", "placement", ",", "lighting"),
        ("opener", "state", "place"),
        ("opener", "companion", "placement"),
        ("opener", "place", ",", "style"),
        ("opener", "material", "placement"),
        ("opener", "state", ",", "style"),
        ("opener", "placement", "place"),
        ("opener", "companion", "place", "lighting"),
    ),
}
_SLOTS: dict[str, dict[str, tuple[str, ...]]] = {
    "living": {
        "opener": words.OPENERS,
        "action": words.LIVING_ACTIONS,
        "attire": words.LIVING_ATTIRE,
        "place": words.PLACES,
        "companion": words.COMPANIONS_LIVING,
        "style": words.STYLES,
        "lighting": words.LIGHTING,
    },
    "object": {
        "opener": words.OPENERS,
        "placement": words.OBJECT_PLACEMENTS,
        "state": words.OBJECT_STATES,
        "material": words.OBJECT_MATERIALS,
        "place": words.PLACES,
        "companion": words.COMPANIONS_OBJECT,
        "style": words.STYLES,
        "lighting": words.LIGHTING,
    },
}


def check_category(category: str) -> str:
    if category not in CATEGORIES:
        raise ValueError(f"Unknown prompt category {category!r}; use one of {CATEGORIES}.")
    return category


def category_of(class_word: str, living_classes: Iterable[str] | None = None) -> str:
    """``living`` if the class word names a living being, else ``object``.

    Rule: the lower-cased class word, or its last word, is in ``living_classes`` (default
    `context_words.LIVING_CLASSES`), and none of its words marks an object ("teddy bear",
    "toy dog" are objects). Override per run with the DataModule's ``context_prompts.category``.
    """
    living = frozenset(w.lower() for w in (living_classes or words.LIVING_CLASSES))
    text = " ".join(class_word.lower().split())
    parts = text.split(" ")
    if any(part in words.OBJECT_MARKERS for part in parts):
        return "object"
    return "living" if text in living or parts[-1] in living else "object"


def space_size(category: str) -> int:
    """How many distinct templates the patterns can make for a category."""
    slots = _SLOTS[check_category(category)]
    total = 0
    for pattern in _PATTERNS[category]:
        size = 1
        for slot in pattern:
            size *= len(slots[slot]) if slot in slots else 1
        total += size
    return total


def _render(pattern: tuple[str, ...], slots: dict[str, tuple[str, ...]], rng: random.Random) -> str:
    text = ""
    for slot in pattern:
        if slot == ",":
            text += ","
        else:
            text += (" " if text else "") + rng.choice(slots[slot])
    return text


def generate_context_templates(category: str, count: int = 10_000, seed: int = 0) -> list[str]:
    """``count`` distinct templates of a category, the same list for the same seed."""
    slots = _SLOTS[check_category(category)]
    if count > space_size(category) // 4:
        raise ValueError(
            f"count={count} is too close to the {space_size(category)} templates the "
            f"{category!r} patterns can make; ask for fewer."
        )
    rng = random.Random(f"context-prompts/{category}/{seed}")
    found: dict[str, None] = {}
    while len(found) < count:
        found.setdefault(_render(rng.choice(_PATTERNS[category]), slots, rng))
    return list(found)


def is_held_out(template: str) -> bool:
    """Whether a template belongs to the fixed held-out share (independent of seed and count)."""
    return zlib.crc32(template.encode("utf-8")) % HELD_OUT_MODULUS == 0


def split_held_out(templates: list[str]) -> tuple[list[str], list[str]]:
    """(training templates, held-out templates), each in the given order."""
    held = [t for t in templates if is_held_out(t)]
    return [t for t in templates if not is_held_out(t)], held


def read_prompt_file(path: str | Path) -> list[str]:
    """Templates from a text file: one per line with "{}" for the concept phrase.

    Blank lines and lines starting with "#" are skipped. A line without the placeholder is an
    error that names it, since its prompt would not contain the concept at all.
    """
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(
            f"Context prompt file {str(file)!r} does not exist; give a text file with one prompt "
            "per line and '{}' where the concept phrase goes."
        )
    templates: list[str] = []
    for number, raw in enumerate(read_utf8_text(file).splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            check_templates([line])
        except ValueError as error:
            raise ValueError(
                f"{file}:{number}: {line!r} needs the concept placeholder '{{}}' exactly once "
                "(it becomes e.g. '<v1> dog'); write e.g. 'a {} wearing a red scarf'."
            ) from error
        templates.append(line)
    if not templates:
        raise ValueError(f"Context prompt file {str(file)!r} holds no prompts.")
    return templates
