"""Evaluation prompt sets: DreamBench's 25 object or 25 live-subject prompts, the multi-concept
set ``multi``, content prompts rendered in a style (``style``, prompts/style.py), or a user's
file.

Prompts are templates in which "{}" stands for the concept phrase ("<v1> dog"), the convention
of the training templates; DreamBench writes them as 'a {0} {1} in the jungle'.format(token,
class). Which of its two sets a subject gets is decided by its class word, as in the paper:
live subjects (dogs and cats) get the outfit prompts, objects the scene prompts. Multi-concept
templates mark concept i with "{i}" instead (prompts/multi_concept.py); a file is one kind
or the other: once a line holds "{0}", every line must mark its concepts by index.
"""

from __future__ import annotations

from pathlib import Path

from core.dreambench import DREAMBENCH_LIVE, DREAMBENCH_OBJECT, LIVE_CLASS_WORDS
from core.errors import read_utf8_text
from prompts.multi_concept import MULTI_CONCEPT_PROMPTS, check_multi_templates, is_multi_concept
from prompts.style import STYLE_EVAL_PROMPTS
from prompts.templates import check_templates

NAMED_SETS = {
    "dreambench_object": DREAMBENCH_OBJECT,
    "dreambench_live": DREAMBENCH_LIVE,
    "multi": MULTI_CONCEPT_PROMPTS,
    "style": STYLE_EVAL_PROMPTS,
}


def dreambench_set_for(class_word: str) -> str:
    """``dreambench_live`` for dogs and cats, ``dreambench_object`` for everything else."""
    return (
        "dreambench_live" if class_word.strip().lower() in LIVE_CLASS_WORDS else "dreambench_object"
    )


def load_prompt_file(path: str | Path) -> list[str]:
    """One template per line ("a {} on the moon", or "a {0} next to a {1}" for a multi-concept
    file); blank lines and '#' comments are skipped."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(
            f"Prompt file {str(file)!r} does not exist; give a text file with one prompt per "
            "line, each holding '{}' where the concept goes (or '{0}', '{1}', ... for several "
            "concepts), or 'dreambench' or 'multi'."
        )
    lines = [line.strip() for line in read_utf8_text(file).splitlines()]
    templates = [line for line in lines if line and not line.startswith("#")]
    if not templates:
        raise ValueError(f"Prompt file {str(file)!r} holds no prompts (one per line).")
    if any(is_multi_concept(template) for template in templates):
        return check_multi_templates(templates, repr(str(file)))
    for number, template in enumerate(templates, start=1):
        if "{}" not in template:
            raise ValueError(
                f"Prompt {number} of {str(file)!r}, {template!r}, has no concept placeholder "
                "'{}': every evaluation prompt must show the concept, e.g. 'a {} on the beach' "
                "(it becomes 'a <v1> dog on the beach')."
            )
    return check_templates(templates)


def resolve_prompt_set(
    source: str, class_word: str, style: bool = False
) -> tuple[str, list[str]]:
    """(name, templates) of ``dreambench`` (picked by class word; a style concept's default is
    the ``style`` set), a named set, or a file."""
    if source == "dreambench":
        source = "style" if style else dreambench_set_for(class_word)
    if source in NAMED_SETS:
        return source, list(NAMED_SETS[source])
    return str(source), load_prompt_file(source)
