"""Mix-of-Show's gradient fusion (Gu et al. 2023, section 3.3): several concepts' ED-LoRAs
merged into one model.

For every linear layer any concept adapted, with W0 the base weight and W_i = W0 + dW_i concept
i's, the fused weight keeps each concept's layer behaviour on that concept's own inputs X_i:

    W* = argmin_W sum_i ||W_i X_i - W X_i||_F^2 + lam ||W - W0||_F^2
       = W0 + (sum_i dW_i G_i) (sum_i G_i + lam I)^-1,        G_i = X_i X_i^T.

The authors' code (TencentARC/Mix-of-Show, ``gradient_fusion.py``) minimises the same squared
error with L-BFGS started from W0 (500 iterations for the text side, 50 for the UNet); gradient
steps from W0 never leave W0 + row-space(X), so their fixed point is this closed form as lam ->
0. We solve it directly (float64, lam a tiny ``ridge`` times the mean diagonal of sum_i G_i,
only for stability where the inputs do not span every direction, which then keep W0's weights).

Which layers and which inputs follow their code, in their order:

1. text encoder (q/k/v/out_proj): X_i are the layer inputs of concept i's own text encoder
   (W0 + dW_i in every layer) on its prompts ``photo of a <token>`` and ``<token>`` (their
   TEMPLATE_SIMPLE and the bare token), every per-layer copy of the prompts, the positions up to
   the end-of-text token (their prompts are not padded); then the fused weights go in.
2. UNet cross-attention to_k / to_v: X_i are the fused text encoder's states that the layer
   reads (its P+ layer's copy), at the concept-token and end-of-text positions (their
   ``category_embedding``); then the fused weights go in.
3. every other adapted UNet layer (to_q, to_out.0, self-attention's k/v): X_i are its inputs
   while sampling concept i's ``photo of a <token>`` without guidance (theirs: 20 steps, all
   recorded, batch 1) with the fused text side and concept i's own spatial weights.

The fused export is one folder: ``xti_embeds.safetensors`` (every concept's layer-wise vectors,
XTI's format), ``mix_of_show_fused.safetensors`` (the fused weight of every fused layer, keyed
``<component>.<module path>.weight``) and an ``export.json`` naming the baseline
``MixOfShowFused`` (models/mix_of_show_fused.py loads it, also as a module ``test`` scores).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from peft.tuners.lora import LoraLayer
from safetensors.torch import save_file
from torch import nn

from backbones import choose_family, family_of_pipeline
from core.atomic import swap_in
from exports.manifest import (
    MANIFEST,
    ExportManifest,
    Format,
    library_versions,
    read_manifest,
    write_manifest,
)
from models.lora_adapters import LORA_WEIGHTS
from models.xti import XTI_EMBEDS, XTIStableDiffusionPipeline, load_xti, read_xti_encoders
from models.xti_layers import layer_of
from pretrained.resolve import resolve_pretrained
from step.encoding import tokenize_padded

FUSED_WEIGHTS = "mix_of_show_fused.safetensors"
FUSED_BASELINE = "MixOfShowFused"
EDLORA_BASELINE = "EDLoRA"
TEMPLATE = "photo of a {}"  # their TEMPLATE_SIMPLE
COMPONENTS = ("text_encoder", "unet")
CROSS_KV = (".attn2.to_k", ".attn2.to_v")


@dataclass(frozen=True)
class FusionSettings:
    """How the fusion collects inputs and solves.

    Attributes:
        spatial_steps: sampling steps recorded per concept for the UNet's spatial layers
            (theirs: 20, every step recorded).
        ridge: lam / mean diag(sum_i G_i), the pull towards W0 that keeps the solve stable.
        seed: the sampling noise of the spatial inputs.
        resolution: the side of those samples; None: the base model's own.
    """

    spatial_steps: int = 20
    ridge: float = 1e-6
    seed: int = 0
    resolution: int | None = None

    def __post_init__(self) -> None:
        if self.spatial_steps < 1:
            raise ValueError(f"spatial_steps must be >= 1, got {self.spatial_steps}.")
        if not 0 < self.ridge < 1:
            raise ValueError(f"ridge must be in (0, 1), got {self.ridge}.")


# ----- the solve -----------------------------------------------------------------------------
def fuse_weight(
    base: torch.Tensor, deltas: list[torch.Tensor], grams: list[torch.Tensor], ridge: float = 1e-6
) -> torch.Tensor:
    """W0 + (sum_i dW_i G_i)(sum_i G_i + lam I)^-1 with lam = ridge x mean diag(sum_i G_i);
    ``base`` (out, in), each dW_i (out, in), each G_i = X_i X_i^T (in, in). float64 inside,
    ``base``'s dtype out."""
    if len(deltas) != len(grams) or not deltas:
        raise ValueError(f"one Gram matrix per concept: {len(deltas)} deltas, {len(grams)} grams.")
    gram = sum(g.double() for g in grams)
    cross = sum(d.double() @ g.double() for d, g in zip(deltas, grams))
    return _solve(base, cross, gram, ridge)


def _solve(
    base: torch.Tensor, cross: torch.Tensor, gram: torch.Tensor, ridge: float
) -> torch.Tensor:
    lam = ridge * float(gram.diagonal().mean().clamp(min=1e-12))
    eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    # (G + lam I) is symmetric: (cross (G + lam I)^-1)^T = (G + lam I)^-1 cross^T.
    update = torch.linalg.solve(gram + lam * eye, cross.T).T
    return (base.double() + update).to(base.dtype)


class LayerStats:
    """One layer's running sums over the concepts: sum_i G_i and sum_i dW_i G_i."""

    def __init__(self) -> None:
        self.gram: torch.Tensor | None = None
        self.cross: torch.Tensor | None = None

    def add(self, delta: torch.Tensor, gram: torch.Tensor) -> None:
        part = delta.double() @ gram
        self.gram = gram if self.gram is None else self.gram + gram
        self.cross = part if self.cross is None else self.cross + part


# ----- the runs ------------------------------------------------------------------------------
@dataclass(frozen=True)
class ConceptRun:
    """One ED-LoRA export folder and what its export.json says."""

    folder: Path
    manifest: ExportManifest

    @property
    def tokens(self) -> list[str]:
        return [entry["token"] for entry in self.manifest.tokens]


def _model_name(name: str) -> str:
    """The base model as a run names it, built-in aliases resolved (``tiny`` = ``tiny-sd``)."""
    try:
        return choose_family(name)[1]
    except (ValueError, OSError):
        return name


def read_runs(folders: list[str | Path]) -> list[ConceptRun]:
    """The runs' manifests, refusing (one ValueError naming the runs) what cannot be fused:
    fewer than two, another baseline, different base models, a token in two runs."""
    if len(folders) < 2:
        raise ValueError(f"gradient fusion merges two or more ED-LoRA exports; got {len(folders)}.")
    runs = [ConceptRun(Path(f), read_manifest(f)) for f in folders]
    others = [str(r.folder) for r in runs if r.manifest.baseline != EDLORA_BASELINE]
    if others:
        raise ValueError(
            f"{', '.join(others)} hold no ED-LoRA export (export.json's baseline is not "
            f"{EDLORA_BASELINE}); fuse exports of configs/clif/mix_of_show.yaml runs."
        )
    bases = {str(r.folder): _model_name(r.manifest.base_model) for r in runs}
    if len(set(bases.values())) > 1:
        listed = "; ".join(f"{folder} from {base!r}" for folder, base in bases.items())
        raise ValueError(
            f"the runs come from different base models ({listed}): gradient fusion merges "
            "weight changes of one base model; fuse runs trained on the same one."
        )
    owners: dict[str, list[str]] = {}
    for run in runs:
        for token in run.tokens:
            owners.setdefault(token, []).append(str(run.folder))
    clashes = {token: where for token, where in owners.items() if len(where) > 1}
    if clashes:
        listed = "; ".join(f"{t!r} in {' and '.join(w)}" for t, w in clashes.items())
        raise ValueError(
            f"the runs share concept tokens ({listed}): each concept of a fused model needs its "
            "own token; train the concepts with distinct tokens (data.init_args.concept_token)."
        )
    return runs


# ----- collecting each concept's inputs ------------------------------------------------------
def adapted_linears(pipe: Any, component: str) -> dict[str, nn.Module]:
    """The peft LoRA layers of one component, by module path."""
    model = getattr(pipe, component)
    return {n: m for n, m in model.named_modules() if isinstance(m, LoraLayer)}


def concept_deltas(pipe: Any, runs: list[ConceptRun]) -> dict[str, dict[str, list[torch.Tensor]]]:
    """Each component's base weights' dW_i per concept, read by diffusers' own LoRA loader
    (peft's delta of each adapter; zero where a run left a layer alone); the adapters are
    removed again, so the pipeline's layers are plain and hold W0."""
    for index, run in enumerate(runs):
        pipe.load_lora_weights(str(run.folder), weight_name=LORA_WEIGHTS, adapter_name=f"c{index}")
    deltas: dict[str, dict[str, list[torch.Tensor]]] = {}
    for component in COMPONENTS:
        deltas[component] = {}
        for name, layer in adapted_linears(pipe, component).items():
            weight = layer.get_base_layer().weight
            deltas[component][name] = [
                layer.get_delta_weight(f"c{i}").detach().float().cpu()
                if f"c{i}" in layer.lora_A
                else torch.zeros(weight.shape)
                for i in range(len(runs))
            ]
    pipe.unload_lora_weights()
    return deltas


def set_layer_weights(model: nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Each named layer's weight replaced in place (in the layer's dtype and device)."""
    with torch.no_grad():
        for name, weight in weights.items():
            target = model.get_submodule(name).weight
            target.copy_(weight.to(target.device, target.dtype))


@contextmanager
def weights_set(model: nn.Module, weights: dict[str, torch.Tensor]) -> Iterator[None]:
    """The modules' weights replaced for the block, the originals put back after it."""
    saved = {name: model.get_submodule(name).weight.detach().clone() for name in weights}
    try:
        set_layer_weights(model, weights)
        yield
    finally:
        set_layer_weights(model, saved)


@contextmanager
def recording_grams(
    model: nn.Module, names: list[str], keep: Callable[[torch.Tensor], torch.Tensor] | None = None
) -> Iterator[dict[str, torch.Tensor]]:
    """X^T X of each named module's inputs while the block runs (rows: every position of the
    input, or those ``keep`` selects from its (B, L, D) input), float64 on the CPU."""
    grams: dict[str, torch.Tensor] = {}

    def hook_for(name: str) -> Callable[..., None]:
        def hook(_: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            x = args[0].detach()
            rows = keep(x) if keep is not None else x.reshape(-1, x.shape[-1])
            rows = rows.double()
            gram = (rows.T @ rows).cpu()
            grams[name] = gram if name not in grams else grams[name] + gram

        return hook

    handles = [model.get_submodule(n).register_forward_pre_hook(hook_for(n)) for n in names]
    try:
        yield grams
    finally:
        for handle in handles:
            handle.remove()


def _prompt_ids(pipe: Any, token: str) -> torch.Tensor:
    """Their two prompts of a concept, tokenized as the XTI pipeline does (padded)."""
    prompts = [TEMPLATE.format(token), token]
    expanded = pipe.maybe_convert_prompt(prompts, pipe.tokenizer)
    return tokenize_padded(pipe.tokenizer, expanded, pipe.text_encoder.device)


def _until_end(ids: torch.Tensor, end_id: int) -> torch.Tensor:
    """(B, L) True at the positions up to and including the first end-of-text token."""
    first_end = (ids == end_id).int().argmax(dim=1, keepdim=True)
    return torch.arange(ids.shape[1], device=ids.device)[None] <= first_end


def _concept_or_end(pipe: Any, ids: torch.Tensor) -> torch.Tensor:
    """(B, L) True at the concept tokens and the first end-of-text token (their
    ``category_embedding`` positions: new tokens and the end token of unpadded prompts)."""
    first_new = min(first for first, _ in pipe.xti_blocks.blocks)
    end = ids == pipe.tokenizer.eos_token_id
    first_end = end & (end.int().cumsum(dim=1) == 1)
    return (ids >= first_new) | first_end


def _encode_layers(pipe: Any, ids: torch.Tensor) -> list[torch.Tensor]:
    """The text encoder's states of every P+ layer's copy of the prompts, one call each."""
    family = family_of_pipeline(pipe)
    encoders, pad = [pipe.text_encoder], [pipe.tokenizer.pad_token_id]
    return [
        family.encode_ids(encoders, pipe.xti_blocks.for_layer(ids, layer), pad,
                          pipe.tokenizer.eos_token_id).hidden_states
        for layer in range(len(pipe.xti_layers))
    ]  # fmt: skip


def fuse_text_encoder(
    pipe: Any, runs: list[ConceptRun], deltas: dict[str, list[torch.Tensor]], ridge: float
) -> dict[str, torch.Tensor]:
    """Step 1: each adapted text-encoder layer, fused on each concept's own activations."""
    model, names = pipe.text_encoder, sorted(deltas)
    base = {n: model.get_submodule(n).weight.detach().float().cpu() for n in names}
    stats = {n: LayerStats() for n in names}
    for index, run in enumerate(runs):
        own = {n: base[n] + deltas[n][index] for n in names}
        for token in run.tokens:
            ids = _prompt_ids(pipe, token)
            kept = _until_end(ids, pipe.tokenizer.eos_token_id)

            def keep(x: torch.Tensor, kept: torch.Tensor = kept) -> torch.Tensor:
                return x[kept.repeat(x.shape[0] // kept.shape[0], 1)]

            recorder = recording_grams(model, names, keep)
            with weights_set(model, own), recorder as grams, torch.no_grad():
                _encode_layers(pipe, ids)
            for name in names:
                stats[name].add(deltas[name][index], grams[name])
    return {n: _solve(base[n], stats[n].cross, stats[n].gram, ridge) for n in names}


def fuse_cross_kv(
    pipe: Any, runs: list[ConceptRun], deltas: dict[str, list[torch.Tensor]], ridge: float
) -> dict[str, torch.Tensor]:
    """Step 2: cross-attention to_k / to_v on the fused text encoder's states of each
    concept's prompts (each layer its P+ copy), at the concept and end positions."""
    names = sorted(n for n in deltas if n.endswith(CROSS_KV))
    base = {n: pipe.unet.get_submodule(n).weight.detach().float().cpu() for n in names}
    stats = {n: LayerStats() for n in names}
    for index, run in enumerate(runs):
        for token in run.tokens:
            ids = _prompt_ids(pipe, token)
            keep = _concept_or_end(pipe, ids)
            with torch.no_grad():
                states = _encode_layers(pipe, ids)
            for name in names:
                layer = pipe.xti_layers.index(layer_of(name))
                rows = states[layer][keep].double().cpu()
                stats[name].add(deltas[name][index], rows.T @ rows)
    return {n: _solve(base[n], stats[n].cross, stats[n].gram, ridge) for n in names}


def fuse_spatial(
    pipe: Any,
    runs: list[ConceptRun],
    deltas: dict[str, list[torch.Tensor]],
    settings: FusionSettings,
) -> dict[str, torch.Tensor]:
    """Step 3: the other adapted UNet layers, on their inputs while sampling each concept's
    prompt (no guidance) with that concept's own spatial weights."""
    model = pipe.unet
    names = sorted(n for n in deltas if not n.endswith(CROSS_KV))
    base = {n: model.get_submodule(n).weight.detach().float().cpu() for n in names}
    stats = {n: LayerStats() for n in names}
    size = settings.resolution
    for index, run in enumerate(runs):
        own = {n: base[n] + deltas[n][index] for n in names}
        for token in run.tokens:
            generator = torch.Generator().manual_seed(settings.seed)
            with weights_set(model, own), recording_grams(model, names) as grams:
                pipe(TEMPLATE.format(token), num_inference_steps=settings.spatial_steps,
                     guidance_scale=1.0, generator=generator, height=size, width=size,
                     output_type="latent")  # fmt: skip
            for name in names:
                stats[name].add(deltas[name][index], grams[name])
    return {n: _solve(base[n], stats[n].cross, stats[n].gram, settings.ridge) for n in names}


# ----- the command's work --------------------------------------------------------------------
def base_pipeline(
    base_model: str, device: str | torch.device = "cpu"
) -> XTIStableDiffusionPipeline:
    """The runs' base model as XTI's SD 1.x pipeline (plain prompts reach the per-layer
    tokens), fp32 on ``device``, DDIM (the project's sampler)."""
    from diffusers import DDIMScheduler

    family, name = choose_family(base_model)
    if family.name != "sd1":
        raise ValueError(
            f"gradient fusion is written for SD 1.x (ED-LoRA's family); {base_model!r} is "
            f"{family.display_name}."
        )
    pipe = XTIStableDiffusionPipeline.from_pretrained(resolve_pretrained(name), safety_checker=None)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def fuse_runs(
    folders: list[str | Path],
    output: str | Path,
    settings: FusionSettings = FusionSettings(),  # noqa: B008 (frozen)
    device: str | torch.device = "cpu",
) -> Path:
    """Fuse the ED-LoRA exports in ``folders`` into one export in ``output``; returns its
    export.json. Every check on the runs comes before the base model loads."""
    runs = read_runs(folders)
    output = Path(output)
    if output.exists() and any(output.iterdir()):
        raise FileExistsError(f"output folder {output} is not empty; give a new folder.")
    pipe = base_pipeline(runs[0].manifest.base_model, device)
    for run in runs:
        load_xti(pipe, run.folder)  # every concept's tokens, as the fused model reads them
    deltas = concept_deltas(pipe, runs)
    text = fuse_text_encoder(pipe, runs, deltas["text_encoder"], settings.ridge)
    set_layer_weights(pipe.text_encoder, text)
    cross = fuse_cross_kv(pipe, runs, deltas["unet"], settings.ridge)
    set_layer_weights(pipe.unet, cross)
    spatial = fuse_spatial(pipe, runs, deltas["unet"], settings)
    fused = {"text_encoder": text, "unet": {**cross, **spatial}}
    return write_fused_export(output, runs, fused, settings)


def write_fused_export(
    folder: Path,
    runs: list[ConceptRun],
    fused: dict[str, dict[str, torch.Tensor]],
    settings: FusionSettings,
) -> Path:
    """``xti_embeds.safetensors`` (all concepts), the fused weights and ``export.json``,
    built in a staging folder and swapped in whole (a failure leaves the old export)."""
    final, folder = folder, folder.with_name(f".{folder.name}.partial-{os.getpid()}")
    folder.mkdir(parents=True, exist_ok=True)
    vectors: dict[str, torch.Tensor] = {}
    layers: list[str] = []
    text_layer: int | None = None
    for run in runs:
        per_encoder, layers, text_layer = read_xti_encoders(run.folder)
        vectors.update(per_encoder[0])
    metadata = {"xti_layers": json.dumps(layers), "xti_tokens": json.dumps(list(vectors))}
    if text_layer is not None:
        metadata["xti_text_layer"] = str(text_layer)
    save_file({t: v.contiguous() for t, v in vectors.items()}, str(folder / XTI_EMBEDS), metadata)
    weights = {
        f"{component}.{name}.weight": weight.detach().float().cpu().contiguous()
        for component, layer_weights in fused.items()
        for name, weight in layer_weights.items()
    }
    sources = {"sources": json.dumps([str(r.folder) for r in runs]),
               "settings": json.dumps(asdict(settings))}  # fmt: skip
    save_file(weights, str(folder / FUSED_WEIGHTS), metadata=sources)
    manifest = ExportManifest(
        baseline=FUSED_BASELINE,
        base_model=runs[0].manifest.base_model,
        family=runs[0].manifest.family,
        tokens=[entry for run in runs for entry in run.manifest.tokens],
        files={XTI_EMBEDS: Format.XTI_EMBEDDINGS, FUSED_WEIGHTS: Format.MIX_OF_SHOW_FUSED},
        versions=library_versions(),
    )
    write_manifest(folder, manifest)
    swap_in(folder, final)
    return final / MANIFEST
