"""R-Aug's part names per class word: what the ``sam`` backend looks for in a concept.

A part is only a candidate: Grounding-DINO must find it inside the concept and SAM must give it
a real size before a region is called "the ear of <v1> dog". The lists cover DreamBench's class
words and common people words; other classes have none (regions by place only) unless the
config names parts for the concept.
"""

from __future__ import annotations

_ANIMAL = ("head", "ear", "eye", "nose", "tail", "leg", "paw")
_PERSON = ("hair", "face", "hat", "shirt", "pants", "shoes")
_TOY = ("head", "eye", "arm", "leg", "wheel")
_PLUSH = ("head", "ear", "eye", "nose", "arm", "leg")
_SHOE = ("sole", "laces", "toe", "heel")

PART_LISTS: dict[str, tuple[str, ...]] = {
    "dog": _ANIMAL, "cat": _ANIMAL, "puppy": _ANIMAL, "kitten": _ANIMAL,
    "man": _PERSON, "woman": _PERSON, "person": _PERSON, "boy": _PERSON, "girl": _PERSON,
    "backpack": ("strap", "pocket", "zipper", "handle"),
    "toy": _TOY, "robot": _TOY, "stuffed animal": _PLUSH, "teddy bear": _PLUSH,
    "sneaker": _SHOE, "boot": _SHOE, "shoe": _SHOE,
    "teapot": ("lid", "spout", "handle", "body"),
    "vase": ("neck", "body", "base"),
    "bowl": ("rim", "base"),
    "can": ("lid", "label"),
    "candle": ("wick", "flame", "jar"),
    "clock": ("face", "hands", "numbers", "frame"),
    "glasses": ("lens", "frame", "temple"),
    "cartoon": ("head", "eye", "mouth", "arm", "leg"),
    "car": ("wheel", "door", "window", "headlight"),
}  # fmt: skip


def parts_for(class_word: str, configured: list[str] | None = None) -> list[str]:
    """The part names to look for: `configured` when given (an empty list turns named parts
    off), else the class word's default list, [] for a class without one."""
    if configured is not None:
        return [name.strip() for name in configured if name.strip()]
    return list(PART_LISTS.get(class_word.strip().lower(), ()))
