"""``export.json``: what an export folder holds, written beside its files.

Every export folder (a run's ``export/`` and each ``export/step-<N>/``) carries one, so a reader
(``models.load_export``, generate_video.py) learns which baseline wrote the folder and the
format of each file from the folder itself instead of guessing from file names::

    {
      "format_version": 1,
      "baseline": "LoRA",
      "base_model": "runwayml/stable-diffusion-v1-5",
      "family": "sd1",
      "tokens": [{"token": "<v1>", "class_word": "dog", "num_vectors": 1}],
      "files": {"pytorch_lora_weights.safetensors": "diffusers-lora",
                "kohya_lora.safetensors": "kohya-lora", ...},
      "step": 500,
      "versions": {"torch": "2.6.0", "diffusers": "0.42.1", ..., "personalize": "0.1.0"}
    }

``base_model`` is ``pretrained_model_name_or_path`` as the run gave it (a hub id, a folder or a
built-in name such as ``tiny-sd``); ``files`` maps each file's path inside the folder to its
format (the final ``export/`` lists its own files: the ``step-<N>/`` folders beside them are
exports of their own, each with its ``export.json``); ``step`` is the global step the weights
are from (null when exported outside a run). Each baseline declares the formats of the files its
``export`` writes (``EXPORT_FORMATS``), and `describe_files` refuses a written file none of them
describes.
"""

from __future__ import annotations

import fnmatch
import importlib.metadata
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from core.atomic import write_file_atomically
from exports.external_formats import A1111_FOLDER

MANIFEST = "export.json"
FORMAT_VERSION = 1
SD1 = "sd1"  # the one backbone family the base loads today (pretrained/stable_diffusion.py)


class Format:
    """The formats a manifest names, each with what reads it."""

    TEXTUAL_INVERSION = "diffusers-textual-inversion"  # {token: vectors}: load_textual_inversion
    CUSTOM_DIFFUSION = "diffusers-custom-diffusion"  # unet.load_attn_procs(..., _pipeline=pipe)
    DIFFUSERS_LORA = "diffusers-lora"  # pipe.load_lora_weights
    KOHYA_LORA = "kohya-lora"  # A1111, ComfyUI, kohya's sd-scripts (and load_lora_weights)
    LYCORIS = "lycoris"  # LoHa / LoKr: ComfyUI, A1111, kohya's sd-scripts (not diffusers)
    A1111_EMBEDDING = "a1111-embedding"  # {"emb_params": vectors}: A1111 / ComfyUI embeddings/
    DIFFUSERS_PIPELINE = "diffusers-pipeline"  # a file of a save_pretrained pipeline folder
    SINGLE_FILE_CHECKPOINT = "single-file-checkpoint"  # original (LDM) layout: from_single_file
    XTI_EMBEDDINGS = "xti-embeddings"  # per-layer tokens: models.xti.load_xti / xti_pipeline
    NETI_MAPPER = "neti-mapper"  # (t, layer) -> token embedding: models.neti.load_neti
    SVDIFF_SHIFTS = "svdiff-spectral-shifts"  # {component.layer: delta}: models.svdiff.load_svdiff
    MIX_OF_SHOW_FUSED = "mix-of-show-fused-weights"  # models.mix_of_show_fused.load_fused
    IP_ADAPTER = "diffusers-ip-adapter"  # pipe.load_ip_adapter (models.ip_adapter sets the encoder)
    PROSPECT_EMBEDDINGS = "prospect-embeddings"  # per-stage tokens: models.prospect.load_prospect
    VISUAL_ENCODER_MAPPER = "visual-encoder-mapper"  # models.visual_encoder.load_subject_encoder
    MLM_CONTEXTUALIZER = "mlm-contextualizer"  # psi and [MASK], which the mlm regularizer reads
    MLM_CONTEXTUALIZER_CONFIG = "mlm-contextualizer-config"  # psi's shape and base model


# The tail of every EXPORT_FORMATS that writes token files: A1111's copies in a1111/, then the
# diffusers ``<token>.safetensors`` files (after the patterns of the baseline's other files).
TOKEN_FILE_FORMATS = (
    (f"{A1111_FOLDER}/*", Format.A1111_EMBEDDING),
    ("*.safetensors", Format.TEXTUAL_INVERSION),
)
LIBRARIES = ("torch", "diffusers", "transformers", "peft", "safetensors", "lightning")
PROJECT = "personalize"  # this project's distribution name (setup.cfg)
_WHERE_EXPORTS_ARE = "pass a run's export/ or export/step-<N> folder"


class NotLoadableError(ValueError):
    """The export exists but does not go into a plain Stable Diffusion pipeline; the message
    says what loads it instead."""


def not_loadable(baseline: str, folder: str | Path, instead: str) -> NotLoadableError:
    """The error of a baseline whose export needs its own pipeline or inputs (``instead``)."""
    return NotLoadableError(
        f"{folder} holds a {baseline} export, which does not go into a plain Stable Diffusion "
        f"pipeline: {instead}"
    )


@dataclass(frozen=True)
class ExportManifest:
    """The contents of one ``export.json`` (see the module docstring)."""

    baseline: str
    base_model: str
    files: dict[str, str]
    tokens: list[dict[str, Any]] = field(default_factory=list)
    family: str = SD1
    step: int | None = None
    versions: dict[str, str | None] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def files_of(self, file_format: str) -> list[str]:
        """The files (paths inside the folder) written in ``file_format``, sorted."""
        return sorted(name for name, fmt in self.files.items() if fmt == file_format)

    def as_dict(self) -> dict[str, Any]:
        """The JSON object, its keys in the order the module docstring shows."""
        data = asdict(self)
        order = ("format_version", "baseline", "base_model", "family", "tokens", "files", "step")
        return {**{key: data.pop(key) for key in order}, **data}


def library_versions() -> dict[str, str | None]:
    """Installed versions of the libraries an export depends on, and of this project."""
    versions: dict[str, str | None] = {}
    for name in (*LIBRARIES, PROJECT):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def exported_files(folder: Path) -> list[str]:
    """Every file under ``folder`` (its path inside it, POSIX), the manifest itself left out."""
    files = (p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    return sorted(name for name in files if name != MANIFEST)


def describe_files(
    folder: Path, formats: Sequence[tuple[str, str]], baseline: str
) -> dict[str, str]:
    """Each file under ``folder`` -> its format: the first ``(pattern, format)`` whose
    fnmatch pattern (``*`` crosses folders) matches its path inside the folder."""
    described = {}
    for name in exported_files(folder):
        found = next((fmt for pattern, fmt in formats if fnmatch.fnmatchcase(name, pattern)), None)
        if found is None:
            raise ValueError(
                f"{baseline}'s export wrote {name}, which its EXPORT_FORMATS does not describe; "
                "add a (pattern, format) pair for it."
            )
        described[name] = found
    return described


def write_manifest(folder: Path, manifest: ExportManifest) -> Path:
    """``folder/export.json``, written beside it and renamed in (core/atomic.py)."""
    text = json.dumps(manifest.as_dict(), indent=2) + "\n"
    path = folder / MANIFEST
    write_file_atomically(path, lambda handle: handle.write(text.encode()))
    return path


def read_manifest(folder: str | Path) -> ExportManifest:
    """The manifest of an export folder; a clear error when the folder is not one."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"export folder {folder} does not exist; train first, or {_WHERE_EXPORTS_ARE}"
        )
    path = folder / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(
            f"{folder} has no {MANIFEST}, so it is not an export folder of this project (or one "
            f"written before exports carried {MANIFEST}); {_WHERE_EXPORTS_ARE}, or load its files "
            'with diffusers\' own loaders (README, "Using the exports")'
        )
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error}); export the run again") from None
    version = data.get("format_version") if isinstance(data, dict) else None
    if version != FORMAT_VERSION:
        raise ValueError(
            f"{path} has format_version {version!r}; this version of the project reads "
            f"{FORMAT_VERSION}. Use the project version that wrote it (its versions field), or "
            f"{_WHERE_EXPORTS_ARE} written by this one"
        )
    missing = [key for key in ("baseline", "base_model", "files") if key not in data]
    if missing:
        raise ValueError(f"{path} lacks {', '.join(missing)}; export the run again")
    known = ExportManifest.__dataclass_fields__
    return ExportManifest(**{key: value for key, value in data.items() if key in known})
