"""Mix-of-Show's gradient fusion: the closed form against a least-squares solve, two ED-LoRAs
fused beat their plain average on each concept's own inputs, the fused export generates, the
command's one-line errors, and ``train.py test`` scoring the fused model on composed prompts."""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler
from export_sampling import module_sample, pipe_sample
from helpers import REPO_ROOT
from peft.tuners.lora import LoraLayer
from safetensors.torch import load_file

from core.concept import ConceptSpec
from exports.manifest import MANIFEST, read_manifest
from models.exports_loading import export_with_manifest
from models.mix_of_show import EDLoRA
from models.mix_of_show_fused import MixOfShowFused, fused_pipeline
from models.mix_of_show_fusion import FUSED_WEIGHTS, fuse_weight
from models.xti import XTI_EMBEDS, read_xti
from train import main as train_main

CONCEPTS = [ConceptSpec("<v1>", "toy"), ConceptSpec("<v2>", "toy")]
PROMPT = "a photo of a <v1> toy and a <v2> toy"


def _fuse_command() -> Any:
    spec = importlib.util.spec_from_file_location("fuse_mix_of_show", REPO_ROOT / "scripts" /
                                                  "fuse_mix_of_show.py")  # fmt: skip
    script = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(script)  # type: ignore[union-attr]
    return script


FUSE = _fuse_command()


# ----- the closed form -----------------------------------------------------------------------
Problem = tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]


def _problem(samples: int, seed: int) -> Problem:
    """W0 (5, 6), two concepts' W_i = W0 + dW_i and inputs X_i (6, samples), float64."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(5, 6, generator=g, dtype=torch.float64)
    deltas = [torch.randn(5, 6, generator=g, dtype=torch.float64) for _ in range(2)]
    inputs = [torch.randn(6, samples, generator=g, dtype=torch.float64) for _ in range(2)]
    return base, deltas, inputs


def test_fused_weight_is_the_least_squares_solution() -> None:
    base, deltas, inputs = _problem(samples=8, seed=0)  # 16 samples span the 6 inputs
    fused = fuse_weight(base, deltas, [x @ x.T for x in inputs], ridge=1e-12)
    stacked_x = torch.cat(inputs, dim=1).T  # (16, 6)
    stacked_y = torch.cat([(base + d) @ x for d, x in zip(deltas, inputs)], dim=1).T
    expected = torch.linalg.lstsq(stacked_x, stacked_y).solution.T
    assert torch.allclose(fused, expected, atol=1e-9, rtol=0), (fused - expected).abs().max()
    # ... and it is no concept's own weight, nor their average.
    for candidate in (base + deltas[0], base + deltas[1], base + (deltas[0] + deltas[1]) / 2):
        assert (fused - candidate).abs().max() > 1e-2


def test_directions_no_concept_reaches_keep_the_base_weights() -> None:
    """With fewer samples than inputs, W0 + the minimum-norm solve of the residual: what
    gradient descent from W0 (their L-BFGS) converges to."""
    base, deltas, inputs = _problem(samples=2, seed=1)  # 4 samples, 6 inputs
    fused = fuse_weight(base, deltas, [x @ x.T for x in inputs], ridge=1e-10)
    stacked_x = torch.cat(inputs, dim=1).T
    residual = torch.cat([d @ x for d, x in zip(deltas, inputs)], dim=1).T
    minimum_norm = torch.linalg.lstsq(stacked_x, residual, driver="gelsd").solution.T
    assert torch.allclose(fused, base + minimum_norm, atol=1e-5, rtol=0)
    null = torch.linalg.svd(stacked_x).Vh[-1]  # a direction no input has
    assert torch.allclose(fused @ null, base @ null, atol=1e-5)


# ----- two ED-LoRA runs ----------------------------------------------------------------------
def _randomised(concept: ConceptSpec, seed: int) -> EDLoRA:
    """An ED-LoRA with random adapters (both factors) and per-layer vectors: a trained run's
    stand-in whose every part matters."""
    module = EDLoRA(concepts=[concept], seed=seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if ".lora_" in name:
                param.copy_(0.1 * torch.randn(param.shape, generator=g))
        vectors = module.concept_tokens.embedding.vectors
        vectors.copy_(torch.randn(vectors.shape, generator=g))
    return module


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[EDLoRA], list[Path]]:
    modules = [_randomised(concept, seed) for seed, concept in enumerate(CONCEPTS)]
    folders = [tmp_path_factory.mktemp(f"edlora-{i}") for i in range(len(modules))]
    for module, folder in zip(modules, folders):
        export_with_manifest(module, folder)
    return modules, folders


@pytest.fixture(scope="module")
def fused(runs: tuple[list[EDLoRA], list[Path]], tmp_path_factory: pytest.TempPathFactory) -> Path:
    _, folders = runs
    output = tmp_path_factory.mktemp("fused") / "export"
    args = [*map(str, folders), "--output", str(output), "--spatial-steps", "20", "--device", "cpu"]
    assert FUSE.main(args) == 0
    return output


def _own_io(module: EDLoRA, token: str) -> dict[str, list[tuple[torch.Tensor, torch.Tensor]]]:
    """Every LoRA layer's (input, output) rows on the concept's prompts in its own ED-LoRA:
    text encoder up to the end-of-text token and cross-attention k/v at the concept's tokens
    and end token (its prompts ``photo of a <token>`` and ``<token>``); the other UNet layers
    while it samples ``photo of a <token>`` (3 DDIM steps, no guidance)."""
    prompts = [f"photo of a {token}", token]
    ids = module.tokenize(prompts)
    end = ids == module.tokenizer.eos_token_id
    first_end = end & (end.cumsum(dim=1) == 1)
    upto = torch.arange(ids.shape[1])[None] <= first_end.int().argmax(dim=1, keepdim=True)
    concept_or_end = (ids >= module.concept_tokens.embedding.base_vocab_size) | first_end
    rows: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    phase = {"text": True}

    def hook_for(key: str, mask: torch.Tensor | None) -> Any:
        def hook(layer: Any, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            if phase["text"] != (mask is not None):
                return
            x, y = args[0].detach(), out.detach()
            if mask is not None:  # the prompts' rows, one copy per P+ layer for the text
                x, y = (t.reshape(-1, mask.shape[0], *t.shape[1:]) for t in (x, y))
                x, y = x[:, mask], y[:, mask]
            flat = (x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1]))
            rows.setdefault(key, []).append(flat)

        return hook

    handles = []
    for key, layer in _named_lora_layers(module).items():
        text = key.startswith("text_encoder.")
        mask = upto if text else concept_or_end if _group(key) == "cross-attention k/v" else None
        handles.append(layer.register_forward_hook(hook_for(key, mask)))
    try:
        with torch.no_grad():
            conditioning = module.encode_text(prompts).conditioning
            latents = torch.zeros(2, 4, 4, 4)  # only the k/v of the text are read from this call
            module.predict_noise(latents, torch.tensor([500, 500]), conditioning)
        phase["text"] = False
        module.generate([prompts[0]], num_inference_steps=3, guidance_scale=1.0)
    finally:
        for handle in handles:
            handle.remove()
    return rows


def _group(key: str) -> str:
    if key.startswith("text_encoder."):
        return "text encoder"
    return "cross-attention k/v" if key.endswith(("attn2.to_k", "attn2.to_v")) else "spatial"


def test_fused_layers_are_closer_to_each_concept_than_the_average(
    runs: tuple[list[EDLoRA], list[Path]], fused: Path
) -> None:
    """Layer by layer on each concept's own inputs: the text encoder's and the cross-attention
    k/v's inputs are the ones the fusion fits (the concept's text), and there the fused layers
    must win. Printed, not asserted (measurements to quote): the spatial layers on the inputs
    of the concept's own model, which are not what the fusion fits (cross-attention's to_out.0
    reads attention over the fused k/v there; self-attention's inputs are nearly the same for
    both concepts, where nothing beats the average), and the whole UNet's prediction on each
    concept's prompt (the k/v fit constrains only the concept-token and end positions, as
    their code does, so the other positions read the base k/v)."""
    modules, _ = runs
    weights = load_file(fused / FUSED_WEIGHTS)
    layers = _named_lora_layers(modules[0])
    # The plain average of the two LoRAs, from each adapter's own factors: B A x alpha / r.
    deltas = [{k: _delta(layer) for k, layer in _named_lora_layers(m).items()} for m in modules]
    average = {k: layer.get_base_layer().weight + (deltas[0][k] + deltas[1][k]) / 2
               for k, layer in layers.items()}  # fmt: skip
    errors: dict[str, list[float]] = {}
    for module, concept in zip(modules, CONCEPTS):
        for key, pairs in _own_io(module, concept.token).items():
            layer = layers[key].get_base_layer()
            for x, y in pairs:
                own = F.linear(x, weights[f"{key}.weight"], layer.bias)
                mean = F.linear(x, average[key], layer.bias)
                part = errors.setdefault(_group(key), [0.0, 0.0, 0.0])
                part[0] += float(((own - y) ** 2).sum())
                part[1] += float(((mean - y) ** 2).sum())
                part[2] += float(((y - F.linear(x, layer.weight, layer.bias)) ** 2).sum())
    # End to end: the fused model, and the base with the averaged weights, same tokens.
    fused_model = MixOfShowFused(fused=str(fused), concepts=CONCEPTS)
    averaged = MixOfShowFused(fused=str(fused), concepts=CONCEPTS)
    with torch.no_grad():
        for key, weight in average.items():
            component, name = key.split(".", 1)
            getattr(averaged, component).get_submodule(name).weight.copy_(weight)
    latents = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(3))
    steps = torch.tensor([200, 700])
    part = errors.setdefault("UNet prediction", [0.0, 0.0, 0.0])
    for module, concept in zip(modules, CONCEPTS):
        prompts = [f"a photo of a {concept.token} toy"] * 2
        with torch.no_grad():
            preds = [m.predict_noise(latents, steps, m.encode_text(prompts).conditioning)
                     for m in (module, fused_model, averaged)]  # fmt: skip
        part[0] += float(((preds[1] - preds[0]) ** 2).sum())
        part[1] += float(((preds[2] - preds[0]) ** 2).sum())
        part[2] += float((preds[0] ** 2).sum())
    assert set(errors) == {"text encoder", "cross-attention k/v", "spatial", "UNet prediction"}
    for group, (fused_error, average_error, size) in errors.items():
        # Relative to the concept's own change of the layer outputs (the prediction's size).
        fused_rel, average_rel = math.sqrt(fused_error / size), math.sqrt(average_error / size)
        print(f"{group}: fused {fused_rel:.4f}, average of the LoRAs {average_rel:.4f} "
              "(relative error against each concept's ED-LoRA)")  # fmt: skip
        if group in ("text encoder", "cross-attention k/v"):
            assert fused_rel < average_rel, group


def _named_lora_layers(module: EDLoRA) -> dict[str, LoraLayer]:
    return {
        f"{component}.{name}": layer
        for component in ("text_encoder", "unet")
        for name, layer in getattr(module, component).named_modules()
        if isinstance(layer, LoraLayer)
    }


def _delta(layer: LoraLayer) -> torch.Tensor:
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    return (b @ a * layer.scaling["default"]).detach()


def test_fused_export_files(runs: tuple[list[EDLoRA], list[Path]], fused: Path) -> None:
    modules, folders = runs
    manifest = read_manifest(fused)
    assert manifest.baseline == "MixOfShowFused" and manifest.base_model == "tiny-sd"
    assert [t["token"] for t in manifest.tokens] == ["<v1>", "<v2>"]
    assert set(manifest.files) == {XTI_EMBEDS, FUSED_WEIGHTS}
    vectors, _ = read_xti(fused)
    for module, concept in zip(modules, CONCEPTS):
        assert torch.equal(vectors[concept.token], module.layer_vectors(0).detach())
    keys = set(load_file(fused / FUSED_WEIGHTS))
    expected = {f"{k}.weight" for k in _named_lora_layers(modules[0])}
    assert keys == expected


@pytest.mark.smoke
def test_fused_export_loads_and_generates(fused: Path) -> None:
    module = MixOfShowFused(fused=str(fused), concepts=CONCEPTS)
    assert not module.trainable_state_keys()
    ours = module_sample(module, PROMPT)
    pipe = fused_pipeline(fused)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    loaded = pipe_sample(pipe, prompt=PROMPT)
    assert torch.allclose(ours, loaded, atol=1e-4, rtol=0), (ours - loaded).abs().max()
    # The fused weights are in the pipeline, and they are not the base model's.
    plain = fused_pipeline(fused)
    base = EDLoRA(concepts=[CONCEPTS[0]])
    weights = load_file(fused / FUSED_WEIGHTS)
    name = next(k for k in weights if k.startswith("unet."))[len("unet."):-len(".weight")]
    saved = weights[f"unet.{name}.weight"]
    assert not torch.equal(base.unet.get_submodule(name).base_layer.weight, saved)
    assert torch.equal(plain.unet.get_submodule(name).weight, saved)


# ----- the command's errors ------------------------------------------------------------------
def _error(capsys: pytest.CaptureFixture[str], args: list[str]) -> str:
    assert FUSE.main(args) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def test_runs_of_different_base_models_are_one_line(
    runs: tuple[list[EDLoRA], list[Path]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, folders = runs
    other = tmp_path / "other-base"
    shutil.copytree(folders[1], other)
    data = json.loads((other / MANIFEST).read_text())
    data["base_model"] = "sd15-random"
    (other / MANIFEST).write_text(json.dumps(data))
    line = _error(capsys, [str(folders[0]), str(other), "--output", str(tmp_path / "out")])
    assert "different base models" in line and str(other) in line and str(folders[0]) in line
    assert not (tmp_path / "out").exists()


def test_runs_with_the_same_token_are_one_line(
    runs: tuple[list[EDLoRA], list[Path]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, folders = runs
    twin = tmp_path / "twin"
    shutil.copytree(folders[0], twin)
    line = _error(capsys, [str(folders[0]), str(twin), str(folders[1]),
                           "--output", str(tmp_path / "out")])  # fmt: skip
    assert "share concept tokens" in line and "'<v1>'" in line and str(twin) in line


# ----- the test stage ------------------------------------------------------------------------
@pytest.mark.slow
def test_the_test_stage_scores_the_fused_model_on_composed_prompts(
    fused: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO_ROOT)
    cli = train_main([
        "test",
        "--config", "configs/clif/mix_of_show_fused.yaml",
        "--config", "configs/tiny.yaml",
        "--model.init_args.fused", str(fused),
        "--trainer.default_root_dir", str(tmp_path),
        "--data.init_args.additional_concepts", "[{token: '<v2>'}]",
        "--data.init_args.eval_prompts.source", "multi",
        "--data.init_args.eval_prompts.max_prompts", "2",
        "--data.init_args.eval_prompts.images_per_prompt", "1",
    ])  # fmt: skip
    (folder,) = Path(cli.trainer.log_dir).glob("eval/test-*")
    results = json.loads((folder / "results.json").read_text())
    values = results["metrics"]
    for key in ("clip_i", "dino_i"):
        assert {f"{key}_c0", f"{key}_c1"} <= set(values)
        assert math.isfinite(values[key])
    assert [c["token"] for c in results["concepts"]] == ["<v1>", "<v2>"]
    assert isinstance(cli.model, MixOfShowFused)
