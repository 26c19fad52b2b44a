"""Simple prompt templates: "{}" stands for the concept phrase, e.g. "<v1> dog"."""

from __future__ import annotations

# The varied short templates Textual Inversion trains with, worded around the concept phrase.
SIMPLE_TEMPLATES = (
    "a photo of a {}",
    "a rendering of a {}",
    "a cropped photo of the {}",
    "the photo of a {}",
    "a photo of a clean {}",
    "a photo of a dirty {}",
    "a dark photo of the {}",
    "a photo of my {}",
    "a photo of the cool {}",
    "a close-up photo of a {}",
    "a bright photo of the {}",
    "a cropped photo of a {}",
    "a photo of the {}",
    "a good photo of the {}",
    "a photo of one {}",
    "a close-up photo of the {}",
    "a rendition of the {}",
    "a photo of the clean {}",
    "a rendition of a {}",
    "a photo of a nice {}",
    "a good photo of a {}",
    "a photo of the nice {}",
    "a photo of the small {}",
    "a photo of the weird {}",
    "a photo of the large {}",
    "a photo of a cool {}",
    "a photo of a small {}",
)

# Custom Diffusion's random rescale tells the text what happened to the image.
FAR_AWAY_WORDS = ("a far away ", "very small ")
ZOOMED_IN_WORDS = ("zoomed in ", "close up ")


def check_templates(templates: list[str] | tuple[str, ...]) -> list[str]:
    """Each template must hold exactly one "{}" where the concept phrase goes."""
    if not templates:
        raise ValueError("prompt_templates is empty; give at least one, e.g. 'a photo of a {}'.")
    for template in templates:
        message = (
            f"Prompt template {template!r} must contain the concept placeholder '{{}}' exactly "
            "once and no other braces (it becomes e.g. '<v1> dog'); write 'a photo of a {}'."
        )
        if template.count("{}") != 1:
            raise ValueError(message)
        try:
            template.format("x")
        except (IndexError, KeyError, ValueError) as error:
            raise ValueError(message) from error
    return list(templates)
