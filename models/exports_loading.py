"""Exports with their manifest, and loading one by it.

`export_with_manifest` writes a module's export and then its ``export.json`` (exports/manifest.py)
from what the module is: callbacks/export.py writes ``export/`` and every ``export/step-<N>/``
through it. `load_export` reads a folder's manifest, finds the baseline class that wrote it
among ``models``' names and lets that class's ``load_into`` install the export into a diffusers
``StableDiffusionPipeline``: nothing is guessed from file names.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backbones import FAMILIES
from exports.manifest import (
    SD1,
    ExportManifest,
    Format,
    NotLoadableError,
    describe_files,
    library_versions,
    not_loadable,
    read_manifest,
    write_manifest,
)

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline


def manifest_of(module: Any, folder: Path, step: int | None = None) -> ExportManifest:
    """The manifest of what ``module.export(folder)`` has just written into ``folder``."""
    baseline = type(module).__name__
    formats = getattr(module, "EXPORT_FORMATS", None)
    if formats is None:
        raise TypeError(
            f"{baseline} declares no EXPORT_FORMATS: the (file pattern, format) pairs of what "
            "its export writes, which export.json records."
        )
    concepts = list(getattr(module, "concepts", None) or [])
    num_vectors = module.concept_tokens.num_vectors if concepts else 0
    tokens = [
        {"token": c.token, "class_word": c.class_word, "num_vectors": num_vectors} for c in concepts
    ]
    return ExportManifest(
        baseline=baseline,
        base_model=str(module.pretrained_model_name_or_path),
        family=getattr(module, "backbone", SD1),
        tokens=tokens,
        files=describe_files(folder, formats, baseline),
        step=step,
        versions=library_versions(),
    )


def export_with_manifest(module: Any, folder: str | Path, step: int | None = None) -> Path:
    """``module.export(folder)``, then ``folder/export.json`` describing it; returns the
    manifest's path. ``step``: the global step the weights are from, when known."""
    folder = Path(folder)
    averaged = getattr(module, "averaged_weights", nullcontext)
    with averaged():  # the EMA of the weights, when the module keeps one
        module.export(folder)
    return write_manifest(folder, manifest_of(module, folder, step))


def baseline_class(manifest: ExportManifest, folder: str | Path) -> type:
    """The class that wrote the export: a name of ``models`` with a ``load_into``."""
    import models

    found = getattr(models, manifest.baseline) if manifest.baseline in models.__all__ else None
    if isinstance(found, type) and callable(getattr(found, "load_into", None)):
        return found
    if Format.MLM_CONTEXTUALIZER in manifest.files.values():
        why = (
            "it is the mlm regularizer's contextualizer (psi), which that loss reads from its "
            "folder; no concept goes into a pipeline"
        )
    else:
        known = sorted(
            name for name in models.__all__
            if callable(getattr(getattr(models, name), "load_into", None))
        )  # fmt: skip
        why = f"no baseline of this project has that name ({', '.join(known)} do)"
    raise NotLoadableError(f"{folder} holds a {manifest.baseline} export, which loads into no "
                           f"pipeline: {why}")  # fmt: skip


def check_loadable(folder: str | Path) -> ExportManifest:
    """The folder's manifest, once it is known that its baseline installs into a plain
    Stable Diffusion pipeline (before any weights load); `NotLoadableError` says what loads
    it instead when it does not."""
    manifest = read_manifest(folder)
    cls = baseline_class(manifest, folder)
    instead = getattr(cls, "LOAD_INSTEAD", None)
    if instead:
        raise not_loadable(manifest.baseline, folder, instead)
    return manifest


def load_export(pipeline: StableDiffusionPipeline, folder: str | Path) -> ExportManifest:
    """Install the export in ``folder`` into ``pipeline`` (a diffusers StableDiffusionPipeline
    of the export's base model) with the loader of the baseline that wrote it, as its
    ``export.json`` names it; returns the manifest.

        pipe = StableDiffusionPipeline.from_pretrained(...)
        models.load_export(pipe, "runs/<run>/export")
        pipe("a photo of a <v1> dog")
    """
    manifest = read_manifest(folder)
    check_family(pipeline, manifest, folder)
    baseline_class(manifest, folder).load_into(pipeline, Path(folder))
    return manifest


def check_family(pipeline: Any, manifest: ExportManifest, folder: str | Path) -> None:
    """A ValueError naming both families when the pipeline is not of the export's family."""
    name = type(pipeline).__name__
    family = next((f.name for f in FAMILIES.values() if name in f.pipeline_class_names), None)
    if family is not None and family != manifest.family:
        wanted = FAMILIES[manifest.family].pipeline_class_names[0]
        raise ValueError(
            f"{folder} is an export for the {manifest.family} backbone ({manifest.base_model}); "
            f"load it into a {wanted} of that model, not a {name} ({family})."
        )
