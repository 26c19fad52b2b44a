"""Denoiser families (backbones/base.py says what one provides), listed by name, and which one
a model option means."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from backbones.base import BackboneFamily
from backbones.flux import Flux
from backbones.sd1 import StableDiffusion1
from backbones.sdxl import StableDiffusionXL

FAMILIES: dict[str, BackboneFamily] = {
    f.name: f for f in (StableDiffusion1(), StableDiffusionXL(), Flux())
}
AUTO = "auto"
DEFAULT_FAMILY = "sd1"  # what "auto" means for a model whose family cannot be read
TINY = "tiny"  # the tiny offline pipeline of the chosen family (configs/tiny.yaml)
OPTION = "model.init_args.backbone"
TINY_NAMES = frozenset(
    {TINY, *(name for f in FAMILIES.values() for name in (f.tiny_name, *f.other_names))}
)


def family_named(name: str) -> BackboneFamily:
    if name not in FAMILIES:
        raise ValueError(f"{OPTION} is {name!r}; use {AUTO} or one of {sorted(FAMILIES)}.")
    return FAMILIES[name]


def declared_family(path: str) -> str | None:
    """The family a diffusers folder's model_index.json declares (None: no folder / unknown)."""
    index = Path(path).expanduser() / "model_index.json"
    if not index.is_file():
        return None
    import json

    class_name = json.loads(index.read_text()).get("_class_name", "")
    return next((f.name for f in FAMILIES.values() if class_name in f.pipeline_class_names), None)


def choose_family(name_or_path: str, backbone: str = AUTO) -> tuple[BackboneFamily, str]:
    """(family, the model name to load) for a model option and ``backbone`` (``auto``: read
    from the model, else SD 1.x). ``tiny`` is the chosen family's tiny pipeline. A model
    whose folder declares another family than ``backbone`` is a one-line error."""
    chosen = None if backbone == AUTO else family_named(backbone)
    if name_or_path == TINY:
        family = chosen or FAMILIES[DEFAULT_FAMILY]
        return family, family.tiny_name
    by_name = next(
        (f for f in FAMILIES.values() if name_or_path in f.built_in_names()), None
    )
    declared = by_name.name if by_name is not None else declared_family(name_or_path)
    if chosen is not None and declared is not None and declared != chosen.name:
        raise ValueError(
            f"model {name_or_path!r} is an {declared} pipeline but {OPTION} is "
            f"{chosen.name!r}; set {OPTION} to {declared} (or auto), or give an {chosen.name} "
            "model."
        )
    if chosen is not None:
        return chosen, name_or_path
    return FAMILIES[declared or DEFAULT_FAMILY], name_or_path


def family_of_pipeline(pipe: Any) -> BackboneFamily:
    """The family of a diffusers pipeline's components (FLUX's has a transformer, SDXL's a
    second text encoder)."""
    if getattr(pipe, "transformer", None) is not None:
        return FAMILIES["flux"]
    return FAMILIES["sdxl" if getattr(pipe, "text_encoder_2", None) is not None else "sd1"]


def pipeline_text_parts(pipe: Any) -> list[tuple[Any, Any]]:
    """A pipeline's (tokenizer, text encoder) pairs in its family's order."""
    family = family_of_pipeline(pipe)
    pairs = zip(family.tokenizer_names, family.text_encoder_names)
    return [(getattr(pipe, t), getattr(pipe, e)) for t, e in pairs]


__all__ = [
    "FAMILIES",
    "TINY_NAMES",
    "BackboneFamily",
    "choose_family",
    "family_named",
    "family_of_pipeline",
    "pipeline_text_parts",
]
