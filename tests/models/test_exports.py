"""Exports round-trip through diffusers' own loaders and sample what `module.generate` samples."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline
from diffusers.models.attention_processor import (
    CustomDiffusionAttnProcessor,
    CustomDiffusionAttnProcessor2_0,
)
from export_sampling import PROMPT, fresh_pipe, module_sample, pipe_sample
from safetensors.torch import load_file

from core.concept import ConceptSpec
from exports.external_formats import A1111_FOLDER, a1111_name
from exports.single_file import SINGLE_FILE
from models import CustomDiffusion, TextualInversion
from models.base import PersonalizationModule
from models.custom_diffusion import load_custom_diffusion

pytestmark = pytest.mark.smoke  # every baseline, loss and export once

CD_WEIGHTS = "pytorch_custom_diffusion_weights.safetensors"
CUSTOM_PROCESSORS = (CustomDiffusionAttnProcessor, CustomDiffusionAttnProcessor2_0)


# ----- helpers --------------------------------------------------------------------------------
def _randomise(module: PersonalizationModule, seed: int) -> None:
    """Give the trained weights seeded random values, so an export is far from the base model."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.unet.named_parameters():
            if "_custom_diffusion" in name:
                param.add_(0.2 * torch.randn(param.shape, generator=generator))
        vectors = module.concept_tokens.embedding.vectors
        vectors.copy_(torch.randn(vectors.shape, generator=generator))


def _token_rows(pipe: StableDiffusionPipeline, tokens: list[str]) -> torch.Tensor:
    ids = pipe.tokenizer.convert_tokens_to_ids(tokens)
    assert pipe.tokenizer.unk_token_id not in ids, tokens
    return pipe.text_encoder.get_input_embeddings().weight[ids].detach()


def _custom_processors(pipe: StableDiffusionPipeline) -> dict[str, torch.nn.Module]:
    return {
        name: proc
        for name, proc in pipe.unet.attn_processors.items()
        if isinstance(proc, CUSTOM_PROCESSORS) and proc.train_kv
    }


def _load_custom_diffusion(pipe: StableDiffusionPipeline, folder: Path) -> None:
    """diffusers' own loader, called as its pipeline-level loaders call it (``_pipeline``)."""
    pipe.unet.load_attn_procs(folder, weight_name=CD_WEIGHTS, _pipeline=pipe)


def _assert_matches_and_differs(
    module_images: torch.Tensor, loaded: torch.Tensor, plain: torch.Tensor
) -> None:
    assert module_images.shape == loaded.shape == (1, 3, 32, 32)
    difference = (module_images - loaded).abs().max().item()
    assert torch.allclose(module_images, loaded, atol=1e-4, rtol=0), difference
    assert (module_images - plain).abs().max().item() > 1e-2


# ----- fixtures --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def plain_images(tiny_sd_path: Path) -> torch.Tensor:
    """The base pipeline on the same prompt and seed, nothing loaded."""
    return pipe_sample(fresh_pipe(tiny_sd_path))


@pytest.fixture(scope="module")
def ti(tmp_path_factory: pytest.TempPathFactory) -> tuple[TextualInversion, Path, list[Path]]:
    module = TextualInversion(concepts=[ConceptSpec("<v1>", "toy")], num_vectors=2)
    _randomise(module, seed=1)
    folder = tmp_path_factory.mktemp("ti-export")
    return module, folder, module.export(folder)


@pytest.fixture(scope="module")
def cd(tmp_path_factory: pytest.TempPathFactory) -> tuple[CustomDiffusion, Path, list[Path]]:
    module = CustomDiffusion(concepts=[ConceptSpec("<v1>", "toy")], export_single_file=True)
    _randomise(module, seed=2)
    folder = tmp_path_factory.mktemp("cd-export")
    return module, folder, module.export(folder)


@pytest.fixture(scope="module")
def cd_images(cd: tuple[CustomDiffusion, Path, list[Path]]) -> torch.Tensor:
    return module_sample(cd[0])


# ----- Textual Inversion ---------------------------------------------------------------------
def test_ti_export_file(ti: tuple[TextualInversion, Path, list[Path]]) -> None:
    module, folder, written = ti
    a1111 = folder / A1111_FOLDER / "v1.safetensors"
    assert written == [folder / "learned_embeds.safetensors", a1111]
    assert sorted(p.name for p in folder.iterdir()) == [A1111_FOLDER, "learned_embeds.safetensors"]
    saved = load_file(written[0])
    assert list(saved) == ["<v1>"]
    assert saved["<v1>"].shape == (2, 32)
    assert saved["<v1>"].dtype == torch.float32
    assert torch.equal(saved["<v1>"], module.concept_tokens.vectors_of(0).detach())


def test_ti_loads_in_diffusers_and_samples_the_same(
    ti: tuple[TextualInversion, Path, list[Path]], tiny_sd_path: Path, plain_images: torch.Tensor
) -> None:
    module, folder, _ = ti
    pipe = fresh_pipe(tiny_sd_path)
    pipe.load_textual_inversion(folder / "learned_embeds.safetensors")
    exported = module.concept_tokens.vectors_of(0).detach()
    assert torch.equal(_token_rows(pipe, ["<v1>", "<v1>_1"]), exported)
    assert pipe.maybe_convert_prompt(PROMPT, pipe.tokenizer) == module.concept_tokens.expand(PROMPT)
    _assert_matches_and_differs(module_sample(module), pipe_sample(pipe), plain_images)


def test_ti_two_concepts_export_one_file_each(tmp_path: Path, tiny_sd_path: Path) -> None:
    module = TextualInversion(
        concepts=[ConceptSpec("<v1>", "toy"), ConceptSpec("<v2>", "dog")], num_vectors=2
    )
    _randomise(module, seed=3)
    written = module.export(tmp_path)
    names = ["learned_embeds-0.safetensors", "learned_embeds-1.safetensors"]
    assert written[::2] == [tmp_path / n for n in names]  # each with its A1111 file after it
    assert sorted(p.name for p in tmp_path.glob("*.safetensors")) == names
    assert sorted(p.name for p in (tmp_path / A1111_FOLDER).iterdir()) == [
        "v1.safetensors", "v2.safetensors"
    ]  # fmt: skip
    pipe = fresh_pipe(tiny_sd_path)
    for index, (path, token) in enumerate(zip(written[::2], ["<v1>", "<v2>"])):
        assert list(load_file(path)) == [token]
        pipe.load_textual_inversion(path)
        exported = module.concept_tokens.vectors_of(index).detach()
        assert torch.equal(_token_rows(pipe, [token, f"{token}_1"]), exported)
    # The module samples with its random vectors, so a pipeline that failed to load a token
    # (and read "<v2>" as characters) would not match.
    prompt = "a <v1> toy next to a <v2> dog"
    module_images, loaded = module_sample(module, prompt), pipe_sample(pipe, prompt)
    assert torch.allclose(module_images, loaded, atol=1e-4, rtol=0)


# ----- Custom Diffusion ----------------------------------------------------------------------
def test_cd_export_files(cd: tuple[CustomDiffusion, Path, list[Path]]) -> None:
    module, folder, written = cd
    assert written == [
        folder / CD_WEIGHTS, folder / SINGLE_FILE, folder / "<v1>.safetensors",
        folder / A1111_FOLDER / "v1.safetensors",
    ]  # fmt: skip
    assert sorted(p.name for p in folder.glob("*.safetensors")) == sorted(
        [CD_WEIGHTS, SINGLE_FILE, "<v1>.safetensors"]
    )
    weights = load_file(folder / CD_WEIGHTS)
    cross = [n for n in module.unet.attn_processors if n.endswith("attn2.processor")]
    assert cross
    expected_keys = {
        f"{layer}.{kind}_custom_diffusion.weight" for layer in cross for kind in ("to_k", "to_v")
    }
    self_attention = {n for n in module.unet.attn_processors if n.endswith("attn1.processor")}
    assert set(weights) == expected_keys | self_attention
    assert all(weights[name].numel() == 0 for name in self_attention)  # weightless entries
    processors = module.unet.attn_processors
    for key, tensor in weights.items():
        if key in self_attention:
            continue
        layer, param = key.split(".processor.")
        assert torch.equal(tensor, processors[f"{layer}.processor"].state_dict()[param])
    tokens = load_file(folder / "<v1>.safetensors")
    assert list(tokens) == ["<v1>"]
    assert torch.equal(tokens["<v1>"], module.concept_tokens.vectors_of(0).detach())


def test_cd_loads_in_diffusers_and_samples_the_same(
    cd: tuple[CustomDiffusion, Path, list[Path]],
    cd_images: torch.Tensor,
    tiny_sd_path: Path,
    plain_images: torch.Tensor,
) -> None:
    module, folder, _ = cd
    pipe = fresh_pipe(tiny_sd_path)
    _load_custom_diffusion(pipe, folder)
    pipe.load_textual_inversion(folder / "<v1>.safetensors")

    loaded = _custom_processors(pipe)
    ours = module.unet.attn_processors
    assert sorted(loaded) == sorted(n for n in ours if n.endswith("attn2.processor"))
    for name, processor in loaded.items():
        for key, tensor in processor.state_dict().items():
            assert torch.equal(tensor, ours[name].state_dict()[key]), (name, key)
    assert torch.equal(_token_rows(pipe, ["<v1>"]), module.concept_tokens.vectors_of(0).detach())
    _assert_matches_and_differs(cd_images, pipe_sample(pipe), plain_images)


def test_cd_kv_weights_matter(
    cd: tuple[CustomDiffusion, Path, list[Path]], cd_images: torch.Tensor, tiny_sd_path: Path
) -> None:
    """With the token alone (no K/V), diffusers must sample something else than the module."""
    _, folder, _ = cd
    pipe = fresh_pipe(tiny_sd_path)
    pipe.load_textual_inversion(folder / "<v1>.safetensors")
    assert (cd_images - pipe_sample(pipe)).abs().max().item() > 1e-2


def test_cd_export_installs_through_load_attn_procs_with_pipeline(
    cd: tuple[CustomDiffusion, Path, list[Path]], tiny_sd_path: Path
) -> None:
    _, folder, _ = cd
    pipe = fresh_pipe(tiny_sd_path)
    pipe.unet.load_attn_procs(folder, weight_name=CD_WEIGHTS, _pipeline=pipe)
    assert _custom_processors(pipe)


def test_project_loader_installs_weights_and_tokens(
    cd: tuple[CustomDiffusion, Path, list[Path]],
    cd_images: torch.Tensor,
    tiny_sd_path: Path,
) -> None:
    _, folder, _ = cd
    pipe = fresh_pipe(tiny_sd_path)
    load_custom_diffusion(pipe, folder)
    loaded = pipe_sample(pipe)
    assert torch.allclose(cd_images, loaded, atol=1e-4, rtol=0)


def test_ti_a1111_embedding_loads_in_diffusers_and_samples_the_same(
    ti: tuple[TextualInversion, Path, list[Path]], tiny_sd_path: Path, plain_images: torch.Tensor
) -> None:
    """``a1111/v1.safetensors``: {"emb_params": vectors}, the file A1111 and ComfyUI read."""
    module, folder, written = ti
    a1111 = folder / A1111_FOLDER / "v1.safetensors"
    assert a1111 in written
    saved = load_file(a1111)
    assert list(saved) == ["emb_params"]
    assert torch.equal(saved["emb_params"], module.concept_tokens.vectors_of(0).detach())
    pipe = fresh_pipe(tiny_sd_path)
    pipe.load_textual_inversion(a1111, token="<v1>")
    _assert_matches_and_differs(module_sample(module), pipe_sample(pipe), plain_images)


def test_a1111_names_are_file_names() -> None:
    assert a1111_name("<v1>") == "v1" and a1111_name("sks") == "sks"
    assert a1111_name("<my dog/2>") == "mydog2" and a1111_name("<>") == "concept"


def test_cd_single_file_merges_the_projections_and_samples_the_same(
    cd: tuple[CustomDiffusion, Path, list[Path]], tiny_sd_path: Path, cd_images: torch.Tensor
) -> None:
    """``sd_checkpoint.safetensors``: K/V merged into a plain UNet, in the original layout;
    with the A1111 embedding, diffusers' single-file loader samples the module's images."""
    module, folder, written = cd
    assert folder / SINGLE_FILE in written
    pipe = StableDiffusionPipeline.from_single_file(
        folder / SINGLE_FILE, config=str(tiny_sd_path), safety_checker=None, local_files_only=True
    )
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_textual_inversion(folder / A1111_FOLDER / "v1.safetensors", token="<v1>")
    loaded = pipe_sample(pipe)
    assert torch.allclose(cd_images, loaded, atol=1e-4, rtol=0), (cd_images - loaded).abs().max()
