"""Prompts of a style concept: "{}" stands for the style phrase ("<v1> style").

Training: Textual Inversion's style templates (its ``imagenet_style_templates_small``, the list
NeTI and diffusers' textual-inversion script carry too).

Evaluation (``eval_prompts.source: style``): ours, written for this project. StyleBench and
ACCORD's Table 3 score a style by rendering content prompts in it; these are 30 contents across
DreamBench's kinds of subject (animals, objects, scenes, people), each "..., in {}", so CLIP-T
and BLIP-T measure whether the content survives while Gram-D measures the style.
"""

from __future__ import annotations

STYLE_TEMPLATES = (
    "a painting in the style of {}",
    "a rendering in the style of {}",
    "a cropped painting in the style of {}",
    "the painting in the style of {}",
    "a clean painting in the style of {}",
    "a dirty painting in the style of {}",
    "a dark painting in the style of {}",
    "a picture in the style of {}",
    "a cool painting in the style of {}",
    "a close-up painting in the style of {}",
    "a bright painting in the style of {}",
    "a good painting in the style of {}",
    "a rendition in the style of {}",
    "a nice painting in the style of {}",
    "a small painting in the style of {}",
    "a weird painting in the style of {}",
    "a large painting in the style of {}",
)

STYLE_EVAL_PROMPTS = (
    "a dog sitting on the grass, in {}",
    "a cat sleeping on a sofa, in {}",
    "a horse running on a beach, in {}",
    "a bird on a tree branch, in {}",
    "a fish in an aquarium, in {}",
    "an elephant in the savanna, in {}",
    "a teapot on a kitchen table, in {}",
    "a vase of flowers by a window, in {}",
    "a red car on a city street, in {}",
    "a bicycle leaning against a wall, in {}",
    "a pair of sneakers on the floor, in {}",
    "a backpack on a wooden bench, in {}",
    "a clock tower in a small town, in {}",
    "a lighthouse on a rocky coast, in {}",
    "a bridge over a river, in {}",
    "a mountain lake at sunrise, in {}",
    "a forest path in autumn, in {}",
    "a snowy village at night, in {}",
    "a desert with cacti, in {}",
    "a harbour with sailing boats, in {}",
    "a woman reading a book, in {}",
    "a man playing the guitar, in {}",
    "a child flying a kite, in {}",
    "an old man with a beard, in {}",
    "two friends walking in the rain, in {}",
    "a bowl of fruit on a table, in {}",
    "a cup of coffee and a croissant, in {}",
    "a castle on a hill, in {}",
    "a robot in a workshop, in {}",
    "a rocket launching into space, in {}",
)
