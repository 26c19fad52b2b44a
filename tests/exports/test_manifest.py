"""export.json: every export folder lists its files and their formats, base model, tokens and
library versions; `models.load_export` installs an export by it and samples the module's images."""

from __future__ import annotations

import importlib.metadata
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from export_sampling import PROMPT, fresh_pipe, module_sample, pipe_sample
from helpers import optimizer_with_lr, tiny_datamodule, tiny_trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from safetensors.torch import load_file

from callbacks.export import ExportWeights
from core.concept import ConceptSpec
from exports.manifest import (
    MANIFEST,
    ExportManifest,
    NotLoadableError,
    describe_files,
    read_manifest,
    write_manifest,
)
from models import (
    XTI,
    CLIFMultiConceptLoRA,
    CLIFTextTuning,
    CustomDiffusion,
    DreamBooth,
    LoRA,
    TextualInversion,
    VisualEncoder,
    export_with_manifest,
    load_export,
)
from models.base import PersonalizationModule
from models.pretraining.contextualizer import ContextualizerPretraining

TOY = [ConceptSpec("<v1>", "toy")]
STEP = 7
TI, A1111 = "diffusers-textual-inversion", "a1111-embedding"
LIBRARIES = ("torch", "diffusers", "transformers", "peft", "safetensors", "lightning")


def _randomise(module: torch.nn.Module, seed: int) -> None:
    """Seeded noise on every trained weight (LoRA's zero B too), so an export that failed to
    load any part would sample differently from the module."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            if param.requires_grad:
                param.add_(0.3 * torch.randn(param.shape, generator=generator))


def _exported(module: PersonalizationModule, folder: Path, seed: int) -> tuple[Any, Path]:
    _randomise(module, seed)
    export_with_manifest(module, folder, step=STEP)
    return module, folder


def _clif_stage2(folder: Path) -> CLIFMultiConceptLoRA:
    stage1 = CLIFTextTuning(concepts=TOY, rank=4, alpha=8.0)
    _randomise(stage1, seed=11)
    stage1.export(folder.parent / "stage1")
    return CLIFMultiConceptLoRA(stage1=str(folder.parent / "stage1"), concepts=TOY)


# name -> (build the module in a folder, the files its export.json must list, vectors per token)
BASELINES: dict[str, tuple[Callable[[Path], Any], dict[str, str], int]] = {
    "TextualInversion": (
        lambda folder: TextualInversion(concepts=TOY, num_vectors=2),
        {"learned_embeds.safetensors": TI, "a1111/v1.safetensors": A1111},
        2,
    ),
    "CustomDiffusion": (
        lambda folder: CustomDiffusion(concepts=TOY, export_single_file=True),
        {
            "pytorch_custom_diffusion_weights.safetensors": "diffusers-custom-diffusion",
            "sd_checkpoint.safetensors": "single-file-checkpoint",
            "<v1>.safetensors": TI,
            "a1111/v1.safetensors": A1111,
        },
        1,
    ),
    "LoRA": (
        lambda folder: LoRA(concepts=TOY, rank=4, alpha=8.0, train_text_encoder=True),
        {
            "pytorch_lora_weights.safetensors": "diffusers-lora",
            "kohya_lora.safetensors": "kohya-lora",
            "<v1>.safetensors": TI,
            "a1111/v1.safetensors": A1111,
        },
        1,
    ),
    "DreamBooth": (
        lambda folder: DreamBooth(concepts=TOY, train_text_encoder=True),
        {"a1111/v1.safetensors": A1111},  # + every pipeline file, checked below
        1,
    ),
    "CLIFTextTuning": (
        lambda folder: CLIFTextTuning(concepts=TOY, rank=4, alpha=8.0),
        {
            "pytorch_lora_weights.safetensors": "diffusers-lora",
            "<v1>.safetensors": TI,
            "a1111/v1.safetensors": A1111,
        },
        1,
    ),
    "CLIFMultiConceptLoRA": (
        _clif_stage2,
        {
            "pytorch_lora_weights.safetensors": "diffusers-lora",
            "kohya_lora.safetensors": "kohya-lora",
            "<v1>.safetensors": TI,
            "a1111/v1.safetensors": A1111,
        },
        1,
    ),
    "XTI": (
        lambda folder: XTI(concepts=TOY),
        {"xti_embeds.safetensors": "xti-embeddings"},
        1,
    ),
    "VisualEncoder": (
        lambda folder: VisualEncoder(concepts=TOY),
        {"visual_encoder.safetensors": "visual-encoder-mapper"},
        4,
    ),
}
LOADABLE = ["TextualInversion", "CustomDiffusion", "LoRA", "DreamBooth", "CLIFTextTuning",
            "CLIFMultiConceptLoRA"]  # fmt: skip
PIPELINE_FILES = {
    "model_index.json", "scheduler/scheduler_config.json", "text_encoder/config.json",
    "text_encoder/model.safetensors", "tokenizer/tokenizer_config.json", "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors", "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
}  # fmt: skip


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Any, Path]]:
    made = {}
    for seed, (name, (build, _, _)) in enumerate(BASELINES.items()):
        folder = tmp_path_factory.mktemp(name) / "export"
        made[name] = _exported(build(folder), folder, seed)
    return made


def _files_in(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


# ----- what export.json says -------------------------------------------------------------------
@pytest.mark.parametrize("name", list(BASELINES))
def test_export_json_lists_exactly_the_files_with_their_formats(
    name: str, exports: dict[str, tuple[Any, Path]]
) -> None:
    _, folder = exports[name]
    written = json.loads((folder / MANIFEST).read_text())  # the file itself, not our reader
    files = written["files"]
    assert set(files) == _files_in(folder) - {MANIFEST}
    expected = BASELINES[name][1]
    if name == "DreamBooth":
        pipeline = {f for f, fmt in files.items() if fmt == "diffusers-pipeline"}
        assert pipeline >= PIPELINE_FILES
        expected = {**expected, **dict.fromkeys(pipeline, "diffusers-pipeline")}
    assert files == expected


@pytest.mark.parametrize("name", list(BASELINES))
def test_export_json_names_the_baseline_base_model_tokens_step_and_versions(
    name: str, exports: dict[str, tuple[Any, Path]]
) -> None:
    _, folder = exports[name]
    written = json.loads((folder / MANIFEST).read_text())
    assert written["format_version"] == 1
    assert written["baseline"] == name
    assert (written["base_model"], written["family"]) == ("tiny-sd", "sd1")
    vectors = BASELINES[name][2]
    assert written["tokens"] == [{"token": "<v1>", "class_word": "toy", "num_vectors": vectors}]
    assert written["step"] == STEP
    versions = {lib: importlib.metadata.version(lib) for lib in LIBRARIES}
    assert versions["torch"] == torch.__version__
    assert written["versions"] == {**versions, "personalize": importlib.metadata.version(
        "personalize")}  # fmt: skip
    assert read_manifest(folder) == ExportManifest(**written)


# ----- load_export --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def plain_images(tiny_sd_path: Path) -> torch.Tensor:
    return pipe_sample(fresh_pipe(tiny_sd_path))


@pytest.mark.parametrize("name", LOADABLE)
def test_load_export_samples_what_the_module_samples(
    name: str, exports: dict[str, tuple[Any, Path]], tiny_sd_path: Path, plain_images: torch.Tensor
) -> None:
    module, folder = exports[name]
    pipe = fresh_pipe(tiny_sd_path)
    manifest = load_export(pipe, folder)
    assert manifest.baseline == name
    module.eval()
    ours, loaded = module_sample(module), pipe_sample(pipe)
    assert torch.allclose(ours, loaded, atol=1e-4, rtol=0), (ours - loaded).abs().max()
    assert (loaded - plain_images).abs().max() > 1e-2  # the export changed the images


def test_load_export_keeps_the_pipelines_scheduler_for_a_dreambooth_folder(
    exports: dict[str, tuple[Any, Path]], tiny_sd_path: Path
) -> None:
    module, folder = exports["DreamBooth"]
    pipe = fresh_pipe(tiny_sd_path)
    scheduler = pipe.scheduler
    load_export(pipe, folder)
    assert pipe.scheduler is scheduler
    assert "<v1>" in pipe.tokenizer.tokenize(PROMPT)
    expected = load_file(folder / "unet" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(pipe.unet.state_dict()[k], v) for k, v in expected.items())


@pytest.mark.parametrize(
    ("name", "instead"),
    [
        ("XTI", r"xti_pipeline\(.*load_xti"),
        ("VisualEncoder", "load_subject_encoder.*install_subject"),
    ],
)
def test_exports_that_need_their_own_pipeline_are_a_clear_error(
    name: str, instead: str, exports: dict[str, tuple[Any, Path]], tiny_sd_path: Path
) -> None:
    _, folder = exports[name]
    pipe = fresh_pipe(tiny_sd_path)
    vocabulary = len(pipe.tokenizer)
    with pytest.raises(NotLoadableError, match=f"{name} export.*{instead}"):
        load_export(pipe, folder)
    assert len(pipe.tokenizer) == vocabulary  # nothing was installed


def test_the_contextualizer_export_has_a_manifest_and_no_pipeline_load(
    tmp_path: Path, tiny_sd_path: Path
) -> None:
    export_with_manifest(ContextualizerPretraining(), tmp_path, step=3)
    manifest = read_manifest(tmp_path)
    assert manifest.baseline == "ContextualizerPretraining" and manifest.tokens == []
    assert manifest.files == {"contextualizer.safetensors": "mlm-contextualizer",
                              "contextualizer.json": "mlm-contextualizer-config"}  # fmt: skip
    with pytest.raises(NotLoadableError, match="mlm regularizer"):
        load_export(fresh_pipe(tiny_sd_path), tmp_path)


# ----- folders that are not (readable) exports -----------------------------------------------
def test_a_folder_without_export_json_is_a_clear_error(tmp_path: Path, tiny_sd_path: Path) -> None:
    TextualInversion(concepts=TOY).export(tmp_path)  # files, no manifest
    with pytest.raises(FileNotFoundError, match=rf"{tmp_path} has no export\.json.*step-<N>"):
        load_export(fresh_pipe(tiny_sd_path), tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_manifest(tmp_path / "missing")


def test_an_unknown_version_or_a_damaged_manifest_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / MANIFEST).write_text(json.dumps({"format_version": 99, "baseline": "LoRA"}))
    with pytest.raises(ValueError, match=rf"{MANIFEST} has format_version 99.*reads 1"):
        read_manifest(tmp_path)
    (tmp_path / MANIFEST).write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_manifest(tmp_path)
    (tmp_path / MANIFEST).write_text(json.dumps({"format_version": 1, "baseline": "LoRA"}))
    with pytest.raises(ValueError, match="lacks base_model, files"):
        read_manifest(tmp_path)


def test_an_unknown_baseline_is_a_clear_error(tmp_path: Path, tiny_sd_path: Path) -> None:
    write_manifest(tmp_path, ExportManifest("Imagined", "tiny-sd", {"x.safetensors": TI}))
    with pytest.raises(NotLoadableError, match="Imagined export.*no baseline.*LoRA"):
        load_export(fresh_pipe(tiny_sd_path), tmp_path)


def test_a_file_the_baseline_does_not_describe_is_refused(
    exports: dict[str, tuple[Any, Path]], tmp_path: Path
) -> None:
    _, folder = exports["XTI"]
    (tmp_path / "xti_embeds.safetensors").write_bytes((folder / "xti_embeds.safetensors")
                                                       .read_bytes())  # fmt: skip
    (tmp_path / "notes.txt").write_text("?")
    with pytest.raises(ValueError, match="XTI's export wrote notes.txt.*EXPORT_FORMATS"):
        describe_files(tmp_path, XTI.EXPORT_FORMATS, "XTI")


# ----- every export folder of a run --------------------------------------------------------
def test_the_final_export_and_every_step_export_carry_one(
    tmp_path: Path, tiny_sd_path: Path
) -> None:
    datamodule = tiny_datamodule()
    module = TextualInversion(concepts=datamodule.concepts, optimizer=optimizer_with_lr(1e-2))
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=2)
    trainer = tiny_trainer(tmp_path, max_steps=4, callbacks=[checkpoints, ExportWeights()])
    trainer.fit(module, datamodule=datamodule)
    export = tmp_path / "export"
    expected = {"learned_embeds.safetensors": TI, "a1111/v1.safetensors": A1111}
    for folder, step in ((export / "step-2", 2), (export / "step-4", 4), (export, 4)):
        manifest = read_manifest(folder)
        assert (manifest.baseline, manifest.step, manifest.files) == ("TextualInversion", step,
                                                                      expected)  # fmt: skip
        assert {f for f in _files_in(folder) if not f.startswith("step-")} == {*expected, MANIFEST}
    # Each step folder loads as what it holds: step 2's token is not the final one.
    first, last = fresh_pipe(tiny_sd_path), fresh_pipe(tiny_sd_path)
    load_export(first, export / "step-2")
    load_export(last, export)
    rows = [p.text_encoder.get_input_embeddings().weight[-1] for p in (first, last)]
    saved = [
        load_file(f / "learned_embeds.safetensors")["<v1>"][0] for f in (export / "step-2", export)
    ]
    assert torch.equal(rows[0], saved[0]) and torch.equal(rows[1], saved[1])
    assert not torch.equal(rows[0], rows[1])
