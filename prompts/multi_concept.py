"""Multi-concept evaluation prompts: templates that name several concepts by position.

A multi-concept template marks concept i with ``{i}`` (``{0}`` is the DataModule's first concept,
``{1}`` the first of ``additional_concepts``, and so on, the order of ``datamodule.concepts``):
"a {0} and a {1} on the beach" becomes "a <v1> dog and a <v2> cat on the beach", scored by
CLIP-T / BLIP-T as "a dog and a cat on the beach". The built-in set ``multi`` pairs two concepts
in DreamBench-like scenes, in the spirit of Custom Diffusion's and CLIF's composition prompts
("a {0} and a {1} in the jungle"); one template swaps the order, so filling is by index, not by
position in the sentence. Single-concept templates keep their one "{}" (prompts/templates.py).
"""

from __future__ import annotations

from string import Formatter

# Two concepts each: {0} and {1} stand for whole concept phrases ("<v1> dog").
MULTI_CONCEPT_PROMPTS: tuple[str, ...] = (
    "a {0} and a {1} in the jungle",
    "a {0} and a {1} in the snow",
    "a {0} and a {1} on the beach",
    "a {0} and a {1} on a cobblestone street",
    "a {0} and a {1} on top of pink fabric",
    "a {0} and a {1} on top of a wooden floor",
    "a {0} and a {1} with a city in the background",
    "a {0} and a {1} with a mountain in the background",
    "a {0} and a {1} with the Eiffel Tower in the background",
    "a {0} and a {1} floating on top of water",
    "a {0} sitting next to a {1}",
    "a {1} in front of a {0}",
    "a photo of a {0} and a {1} in a garden",
    "a {0} and a {1} on a table in a kitchen",
    "a {0} and a {1} in a living room",
    "a {0} beside a {1} in a forest",
    "a {0} and a {1} under a starry night sky",
    "a watercolor painting of a {0} and a {1}",
)


def _fields(template: str) -> list[str]:
    """The replacement fields of a template, as written ("" for "{}")."""
    try:
        parsed = list(Formatter().parse(template))
    except ValueError as error:
        raise ValueError(f"Prompt template {template!r} has unbalanced braces: {error}") from None
    fields = []
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if spec or conversion:
            raise ValueError(
                f"Prompt template {template!r}: write concept placeholders as plain '{{}}' or "
                "'{0}', '{1}', ... without format specs or conversions."
            )
        fields.append(name)
    return fields


def is_multi_concept(template: str) -> bool:
    """Whether the template marks a concept by position ("{0}") rather than with one "{}";
    False for a malformed one, which the single-concept checks then report."""
    try:
        parsed = list(Formatter().parse(template))
    except ValueError:
        return False
    return any(name is not None and name.isdigit() for _, name, _, _ in parsed)


def placeholder_indices(template: str) -> list[int]:
    """The concepts a multi-concept template names, sorted, each once ("{1} and {0}" -> [0, 1]).

    Raises a ValueError for anything but ``{<digits>}`` fields, e.g. a "{}" mixed in (which
    concept it means would depend on its place) or a named field.
    """
    fields = _fields(template)
    if not fields or not all(name.isdigit() for name in fields):
        raise ValueError(
            f"Multi-concept prompt {template!r} must mark every concept by its index: '{{0}}' for "
            "the first concept, '{1}' for the second, ..., e.g. 'a {0} and a {1} on the beach' "
            "(no '{}' or named fields in it)."
        )
    return sorted({int(name) for name in fields})


def named_concepts(templates: list[str]) -> list[int] | None:
    """The concepts a prompt set names (sorted), or None for a single-concept ("{}") set."""
    if not any(is_multi_concept(t) for t in templates):
        return None
    return sorted({i for t in templates for i in placeholder_indices(t)})


def check_multi_templates(templates: list[str], where: str) -> list[str]:
    """Every template of a set that uses "{0}" must be multi-concept too (no "{}" lines)."""
    for number, template in enumerate(templates, start=1):
        try:
            placeholder_indices(template)
        except ValueError as error:
            raise ValueError(f"Prompt {number} of {where}: {error}") from None
    return list(templates)


def check_concept_count(templates: list[str], num_concepts: int, where: str) -> None:
    """A ValueError when the prompts name a concept the run does not have."""
    named = named_concepts(templates)
    if named is None or named[-1] < num_concepts:
        return
    highest = named[-1]
    raise ValueError(
        f"The evaluation prompts {where} use the placeholder '{{{highest}}}', so they need "
        f"{highest + 1} concepts, but the run has {num_concepts}. Add concepts with "
        "data.init_args.additional_concepts (e.g. [{token: '<v2>', class_word: cat, "
        "instance_data_dir: photos/cat}]) or choose a single-concept set (eval_prompts.source: "
        "dreambench)."
    )
