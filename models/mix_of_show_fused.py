"""A Mix-of-Show fused export (models/mix_of_show_fusion.py) in a pipeline, or as a module.

`load_fused` installs one into a diffusers ``StableDiffusionPipeline`` of its base model (XTI's
per-layer tokens and processors, then the fused layer weights in place of the base's);
`fused_pipeline` builds XTI's pipeline (plain prompts) with it. `MixOfShowFused` is the same
model as a `PersonalizationModule`, so the project's ``test`` / ``predict`` stages generate and
score it like any run (``eval_prompts.source multi`` for prompts composing the concepts)::

    python train.py test --config configs/clif/mix_of_show_fused.yaml \
        --model.init_args.fused runs/fused --data.init_args.eval_prompts.source multi ...

Nothing of it trains: the fusion already chose every weight.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors import safe_open
from torch import nn

from backbones import choose_family
from exports.manifest import read_manifest
from models.mix_of_show_fusion import (
    COMPONENTS,
    FUSED_BASELINE,
    FUSED_WEIGHTS,
    base_pipeline,
    set_layer_weights,
)
from models.xti import XTI, XTI_EMBEDS, load_xti, read_xti_encoders


def read_fused_weights(folder: str | Path) -> dict[str, dict[str, torch.Tensor]]:
    """``{component: {module path: fused weight}}`` of a fused export."""
    path = Path(folder) / FUSED_WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(
            f"{folder} has no {FUSED_WEIGHTS}: it is not a Mix-of-Show fused export "
            "(scripts/fuse_mix_of_show.py writes one)."
        )
    weights: dict[str, dict[str, torch.Tensor]] = {c: {} for c in COMPONENTS}
    with safe_open(str(path), framework="pt") as handle:
        for key in handle.keys():  # noqa: SIM118 (safetensors' handle is no dict)
            component, name = key.split(".", 1)
            if component not in weights or not name.endswith(".weight"):
                raise ValueError(f"{path} holds {key!r}, not a fused layer weight of {COMPONENTS}.")
            weights[component][name.removesuffix(".weight")] = handle.get_tensor(key)
    return weights


def checked_fused_weights(
    components: dict[str, nn.Module], folder: str | Path
) -> dict[str, dict[str, torch.Tensor]]:
    """The export's fused weights, each checked against its component (the layer exists
    with the weight's shape); changes nothing."""
    weights = read_fused_weights(folder)
    for component, layers in weights.items():
        model = components[component]
        for name, weight in layers.items():
            try:
                target = model.get_submodule(name).weight
            except AttributeError:
                raise ValueError(
                    f"{folder}'s fused {component} layer {name!r} is not a plain layer of this "
                    "model (another architecture, or LoRA adapters already loaded into it)."
                ) from None
            if target.shape != weight.shape:
                raise ValueError(
                    f"{folder}'s fused {component} layer {name!r} is {list(weight.shape)}, the "
                    f"model's {list(target.shape)}: the export is of another base model."
                )
    return weights


def install_fused_weights(components: dict[str, nn.Module], folder: str | Path) -> int:
    """Copy the fused weights into the components' layers (all checked first); returns how
    many were set."""
    weights = checked_fused_weights(components, folder)
    for component, layers in weights.items():
        set_layer_weights(components[component], layers)
    return sum(len(layers) for layers in weights.values())


def load_fused(pipe: Any, folder: str | Path) -> list[str]:
    """Install a fused export into a pipeline of its base model; returns the tokens. Generate
    with `models.xti.xti_prompt_embeds`, or build the pipeline with `fused_pipeline`. The
    weights are checked, then the tokens installed (their own checks first), then the weights
    copied, so an export that does not fit changes nothing."""
    components = {"text_encoder": pipe.text_encoder, "unet": pipe.unet}
    weights = checked_fused_weights(components, folder)
    tokens = load_xti(pipe, folder)
    for component, layers in weights.items():
        set_layer_weights(components[component], layers)
    return tokens


def fused_pipeline(folder: str | Path, device: str | torch.device = "cpu") -> Any:
    """XTI's pipeline of the export's base model (its export.json), the fused model in it."""
    pipe = base_pipeline(read_manifest(folder).base_model, device)
    load_fused(pipe, folder)
    return pipe


class MixOfShowFused(XTI):
    """A fused export as a module for ``test`` / ``predict``: the concepts' layer-wise vectors
    and the fused weights, nothing trained."""

    LOAD_INSTEAD: ClassVar[str] = (
        "its per-layer tokens need XTI's prompt encoding; models.mix_of_show_fused."
        "fused_pipeline(folder) builds a pipeline that generates from plain prompts (or "
        "load_fused(pipe, folder), then pipe(prompt_embeds=xti_prompt_embeds(pipe, prompts)))"
    )
    families: ClassVar[frozenset[str]] = frozenset({"sd1"})

    def __init__(
        self,
        fused: str,
        num_vectors: int | None = None,
        text_layer: int | None = None,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            fused: the fused export's folder (scripts/fuse_mix_of_show.py's output). The
                run's concepts (the DataModule's tokens) must be among its concepts, and
                ``pretrained_model_name_or_path`` its base model.
            num_vectors: None: the export's (ED-LoRA's 2); another count is refused.
            text_layer: None: the layer the runs trained with.
            kwargs: the base's options.
        """
        folder = Path(fused)
        manifest = read_manifest(folder)  # before the (slow) model load
        if manifest.baseline != FUSED_BASELINE:
            raise ValueError(
                f"{folder} holds a {manifest.baseline} export, not a Mix-of-Show fused one; "
                "fuse ED-LoRA runs with scripts/fuse_mix_of_show.py first."
            )
        held = {entry["token"] for entry in manifest.tokens}
        missing = [c.token for c in kwargs.get("concepts") or [] if c.token not in held]
        if missing:
            raise ValueError(
                f"{folder} fuses the concepts {sorted(held)}, not {missing}; give the "
                "DataModule those tokens (data.init_args.concept_token / additional_concepts)."
            )
        wanted = choose_family(manifest.base_model)[1]
        given = choose_family(kwargs.get("pretrained_model_name_or_path", "tiny-sd"))[1]
        if wanted != given:
            raise ValueError(
                f"{folder} was fused on {manifest.base_model!r}, but the module loads "
                f"{given!r}; set model.init_args.pretrained_model_name_or_path to the former."
            )
        vectors, _, saved_layer = read_xti_encoders(folder / XTI_EMBEDS)
        saved_count = next(iter(vectors[0].values())).shape[1]
        if num_vectors not in (None, saved_count):
            raise ValueError(
                f"{folder}'s concepts have {saved_count} vectors per layer, not num_vectors "
                f"{num_vectors}; leave num_vectors unset."
            )
        layer = saved_layer if text_layer is None else text_layer
        super().__init__(
            init_embeddings=str(folder), num_vectors=saved_count, text_layer=layer, **kwargs
        )
        install_fused_weights({"text_encoder": self.text_encoder, "unet": self.unet}, folder)
        self.concept_tokens.embedding.vectors.requires_grad_(False)
        self.fused = str(folder)

    def trainable_groups(self) -> dict[str, list[nn.Parameter]]:
        return {}

    def setup(self, stage: str) -> None:
        if stage == "fit":
            raise ValueError(
                "MixOfShowFused is a fused model for test / predict; it trains nothing (train "
                "each concept with configs/clif/mix_of_show.yaml, then fuse the exports)."
            )
        super().setup(stage)
