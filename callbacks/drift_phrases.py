"""The adjective phrases of the semantic-drift plot (ClassDiffusion Fig. 3a, Appendix D/E).

The paper asked ChatGPT for 70 adjectives describing a dog in a photo; this list is our own and
kept class-agnostic (colour, size, texture, condition, mood, age, style), so the same 70 phrases
serve any class word: "a fluffy dog", "a fluffy backpack".
"""

from __future__ import annotations

ADJECTIVES: tuple[str, ...] = (
    # colour and light
    "white", "black", "brown", "red", "blue", "green", "yellow", "pink", "purple", "orange",
    "golden", "grey", "bright", "dark", "pale", "colorful",
    # size and shape
    "small", "large", "big", "tiny", "huge", "tall", "short", "round", "slim", "chubby",
    # surface and texture
    "fluffy", "furry", "smooth", "rough", "shiny", "soft", "hairy", "wrinkled", "spotted",
    "striped",
    # condition
    "clean", "dirty", "wet", "dry", "new", "old", "worn", "dusty", "muddy", "polished",
    # mood and character
    "happy", "sad", "calm", "angry", "sleepy", "playful", "curious", "friendly", "cute",
    "proud", "shy", "lazy", "brave", "funny",
    # age, style and quality
    "young", "elderly", "vintage", "modern", "fancy", "plain", "beautiful", "weird", "nice",
    "cool",
)  # fmt: skip


def article(word: str) -> str:
    """'an' before a vowel letter, else 'a' (good enough for these adjectives)."""
    return "an" if word[:1].lower() in "aeiou" else "a"


def adjective_phrases(class_word: str, adjectives: tuple[str, ...] = ADJECTIVES) -> list[str]:
    """'a fluffy dog', 'an old dog', ... one phrase per adjective."""
    return [f"{article(adj)} {adj} {class_word}" for adj in adjectives]
