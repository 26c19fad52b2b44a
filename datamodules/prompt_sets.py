"""Evaluation prompt sets: DreamBench's 25 object or 25 live-subject prompts, or a user's file.

Prompts are templates in which "{}" stands for the concept phrase ("<v1> dog"), the convention
of the training templates; DreamBench writes them as 'a {0} {1} in the jungle'.format(token,
class). Which of its two sets a subject gets is decided by its class word, as in the paper:
live subjects (dogs and cats) get the outfit prompts, objects the scene prompts.
"""

from __future__ import annotations

from pathlib import Path

from datamodules.prompts import check_templates

_SHARED_BY_BOTH = (
    "a {} in the jungle",
    "a {} in the snow",
    "a {} on the beach",
    "a {} on a cobblestone street",
    "a {} on top of pink fabric",
    "a {} on top of a wooden floor",
    "a {} with a city in the background",
    "a {} with a mountain in the background",
    "a {} with a blue house in the background",
    "a {} on top of a purple rug in a forest",
)
_ATTRIBUTES = (
    "a red {}",
    "a purple {}",
    "a shiny {}",
    "a wet {}",
    "a cube shaped {}",
)
DREAMBENCH_OBJECT: tuple[str, ...] = (
    *_SHARED_BY_BOTH,
    "a {} with a wheat field in the background",
    "a {} with a tree and autumn leaves in the background",
    "a {} with the Eiffel Tower in the background",
    "a {} floating on top of water",
    "a {} floating in an ocean of milk",
    "a {} on top of green grass with sunflowers around it",
    "a {} on top of a mirror",
    "a {} on top of the sidewalk in a crowded street",
    "a {} on top of a dirt road",
    "a {} on top of a white rug",
    *_ATTRIBUTES,
)
DREAMBENCH_LIVE: tuple[str, ...] = (
    *_SHARED_BY_BOTH,
    "a {} wearing a red hat",
    "a {} wearing a santa hat",
    "a {} wearing a rainbow scarf",
    "a {} wearing a black top hat and a monocle",
    "a {} in a chef outfit",
    "a {} in a firefighter outfit",
    "a {} in a police outfit",
    "a {} wearing pink glasses",
    "a {} wearing a yellow shirt",
    "a {} in a purple wizard outfit",
    *_ATTRIBUTES,
)
# DreamBench's 30 subjects (folder name -> class word), from its prompts_and_classes.txt.
DREAMBENCH_SUBJECTS: dict[str, str] = {
    "backpack": "backpack", "backpack_dog": "backpack", "bear_plushie": "stuffed animal",
    "berry_bowl": "bowl", "can": "can", "candle": "candle", "cat": "cat", "cat2": "cat",
    "clock": "clock", "colorful_sneaker": "sneaker", "dog": "dog", "dog2": "dog", "dog3": "dog",
    "dog5": "dog", "dog6": "dog", "dog7": "dog", "dog8": "dog", "duck_toy": "toy",
    "fancy_boot": "boot", "grey_sloth_plushie": "stuffed animal", "monster_toy": "toy",
    "pink_sunglasses": "glasses", "poop_emoji": "toy", "rc_car": "toy", "red_cartoon": "cartoon",
    "robot_toy": "toy", "shiny_sneaker": "sneaker", "teapot": "teapot", "vase": "vase",
    "wolf_plushie": "stuffed animal",
}  # fmt: skip
DREAMBENCH_CLASS_WORDS = frozenset(DREAMBENCH_SUBJECTS.values())
LIVE_CLASS_WORDS = frozenset({"dog", "cat"})  # DreamBench's live subjects: 7 dogs, 2 cats
NAMED_SETS = {"dreambench_object": DREAMBENCH_OBJECT, "dreambench_live": DREAMBENCH_LIVE}


def dreambench_set_for(class_word: str) -> str:
    """``dreambench_live`` for dogs and cats, ``dreambench_object`` for everything else."""
    return (
        "dreambench_live" if class_word.strip().lower() in LIVE_CLASS_WORDS else "dreambench_object"
    )


def load_prompt_file(path: str | Path) -> list[str]:
    """One template per line ("a {} on the moon"); blank lines and '#' comments are skipped."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(
            f"Prompt file {str(file)!r} does not exist; give a text file with one prompt per "
            "line, each holding '{}' where the concept goes, or 'dreambench'."
        )
    lines = [line.strip() for line in file.read_text(encoding="utf-8").splitlines()]
    templates = [line for line in lines if line and not line.startswith("#")]
    if not templates:
        raise ValueError(f"Prompt file {str(file)!r} holds no prompts (one per line).")
    for number, template in enumerate(templates, start=1):
        if "{}" not in template:
            raise ValueError(
                f"Prompt {number} of {str(file)!r}, {template!r}, has no concept placeholder "
                "'{}': every evaluation prompt must show the concept, e.g. 'a {} on the beach' "
                "(it becomes 'a <v1> dog on the beach')."
            )
    return check_templates(templates)


def resolve_prompt_set(source: str, class_word: str) -> tuple[str, list[str]]:
    """(name, templates) of ``dreambench`` (picked by class word), a named set, or a file."""
    if source == "dreambench":
        source = dreambench_set_for(class_word)
    if source in NAMED_SETS:
        return source, list(NAMED_SETS[source])
    return str(source), load_prompt_file(source)
