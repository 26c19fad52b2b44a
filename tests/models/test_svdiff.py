"""SVDiff: the spectral-shift reconstruction, what trains, exact resume, the export a diffusers
pipeline loads, SPL and DDLoss on top, bad input, and Cut-Mix-Unmix."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from baseline_checks import (
    assert_only_trainable_changed,
    assert_resume_is_exact,
    assert_trained_stay_fp32_under_bf16,
)
from export_sampling import fresh_pipe, module_sample, pipe_sample
from helpers import REPO_ROOT, optimizer_with_lr, parameters_reached, tiny_datamodule
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_cli import run_folder
from test_shipped_configs import assert_holds, parsed
from test_user_errors import assert_one_clear_line

from core.concept import ConceptSpec
from datamodules.instance_dataset import ConceptData
from models.svdiff import (
    SVDIFF_SHIFTS,
    SVDiff,
    cut_mix_prompt,
    load_svdiff,
    stitch,
    unmix_loss,
)
from train import main, run_from_command_line

CONFIG = "configs/classdiffusion/svdiff.yaml"
TINY = "configs/tiny.yaml"
TOKEN_VECTORS = "text_encoder.embeddings.token_embedding.vectors"
TOY, CAT = "<v1> toy", "<v2> cat"
CROSS_KEY = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"


def build(**overrides: Any) -> tuple[SVDiff, Any]:
    datamodule = tiny_datamodule()
    settings: dict[str, Any] = {
        "concepts": datamodule.concepts,
        "optimizer": optimizer_with_lr(1e-2),
    }
    settings.update(overrides)
    return SVDiff(**settings), datamodule


def effective_and_frozen(layer: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """The weight the layer computes with, and its stored (frozen) pretrained weight."""
    return layer.weight.detach(), layer.parametrizations["weight"].original.detach()


def expected_weight(frozen: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """U diag(relu(S + delta)) Vh of the weight as an (out, in*k*k) matrix, in float64."""
    matrix = frozen.double().reshape(frozen.shape[0], -1)
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    return (u @ torch.diag(torch.relu(s + delta.double())) @ vh).reshape(frozen.shape)


# ----- the reconstruction ----------------------------------------------------------------------
def test_the_weight_is_u_relu_s_plus_delta_vh_for_linear_and_conv() -> None:
    module, _ = build()
    unet = module.unet
    layers = {"linear": unet.get_submodule(CROSS_KEY), "conv3x3": unet.conv_in}
    assert layers["conv3x3"].weight.shape[-1] == 3  # a real kernel, reshaped (out, in*3*3)
    generator = torch.Generator().manual_seed(0)
    for kind, layer in layers.items():
        weight, frozen = effective_and_frozen(layer)
        before = frozen.clone()
        # delta = 0: the pretrained weight itself, bitwise (the residual form) and U S Vh.
        assert torch.equal(weight, frozen), kind
        zero = torch.zeros(min(frozen.shape[0], frozen[0].numel()))
        assert torch.allclose(weight.double(), expected_weight(frozen, zero), atol=1e-6), kind
        shift = layer.parametrizations["weight"][0]
        assert shift.delta.shape == zero.shape
        with torch.no_grad():  # some singular values pushed below 0: ReLU cuts them
            shift.delta.copy_(torch.randn(zero.shape, generator=generator) * shift.S.max())
        assert bool((shift.S + shift.delta < 0).any()), kind
        weight, frozen = effective_and_frozen(layer)
        want = expected_weight(frozen, shift.delta.detach())
        assert torch.allclose(weight.double(), want, atol=1e-5), kind
        assert (weight - frozen).abs().max() > 1e-2, kind
        assert torch.equal(frozen, before), kind  # the base never changes


def test_default_targets_every_linear_and_conv_and_nothing_else() -> None:
    module, _ = build(train_text_encoder=True)
    for root in (module.unet, module.text_encoder):
        matrices = {
            n for n, m in root.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))
        }
        shifted = {n.removesuffix(".parametrizations.weight.0.delta") for n, _ in
                   root.named_parameters() if n.endswith(".delta")}  # fmt: skip
        assert matrices and shifted == matrices
    chosen, _ = build(target_modules=["attn2\\.to_[kv]"])
    names = {n for n, p in chosen.named_parameters() if p.requires_grad}
    assert names and all(".attn2.to_k." in n or ".attn2.to_v." in n for n in names)


# ----- what trains, resume ---------------------------------------------------------------------
@pytest.mark.parametrize("text_and_tokens", [False, True])
def test_only_the_shifts_change(text_and_tokens: bool, tmp_path: Path) -> None:
    module, datamodule = build(train_text_encoder=text_and_tokens, train_tokens=text_and_tokens)
    state = module.state_dict()
    expected = {k for k in state if k.startswith("unet.") and k.endswith(".delta")}
    if text_and_tokens:
        expected |= {k for k in state if k.startswith("text_encoder.") and k.endswith(".delta")}
        expected.add(TOKEN_VECTORS)
    assert expected and module.trainable_state_keys() == expected
    assert not any(k.endswith((".U", ".S", ".Vh")) for k in state)  # derived, never saved
    groups = {"spectral_shifts"} | (
        {"text_encoder_spectral_shifts", "tokens"} if text_and_tokens else set()
    )
    assert set(module.trainable_groups()) == groups
    assert_only_trainable_changed(module, datamodule, tmp_path, steps=2)


def test_resume_from_a_mid_epoch_checkpoint_is_exact(tmp_path: Path) -> None:
    assert_resume_is_exact(lambda: build(train_text_encoder=True), tmp_path, total_steps=5)


def test_shifts_stay_fp32_and_move_under_bf16_mixed(tmp_path: Path) -> None:
    module, datamodule = build()
    trained = assert_trained_stay_fp32_under_bf16(module, datamodule, tmp_path, steps=2)
    assert all(p.any() for p in trained)  # every layer's shift moved, none rounded away


# ----- export ----------------------------------------------------------------------------------
def _randomised_export(folder: Path) -> SVDiff:
    module, _ = build(train_text_encoder=True, train_tokens=True)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if name.endswith(".delta"):
                scale = 0.3 if "text_encoder" in name else 0.5
                param.copy_(torch.randn(param.shape, generator=generator) * scale)
        vectors = module.concept_tokens.embedding.vectors
        vectors.copy_(torch.randn(vectors.shape, generator=generator))
    module.export(folder)
    return module


def test_export_loads_into_diffusers_and_samples_the_same(
    tiny_sd_path: Path, tmp_path: Path
) -> None:
    module = _randomised_export(tmp_path)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted([SVDIFF_SHIFTS, "<v1>.safetensors", "a1111"])
    shifts = load_file(tmp_path / SVDIFF_SHIFTS)
    trained = {n: p for n, p in module.named_parameters() if n.endswith(".delta")}
    assert len(shifts) == len(trained)  # only the shifts, one per layer
    for key, delta in shifts.items():
        assert torch.equal(delta, trained[f"{key}.parametrizations.weight.0.delta"])
    with safe_open(str(tmp_path / SVDIFF_SHIFTS), framework="pt") as handle:
        metadata = handle.metadata()
    assert metadata["base_model"] == "tiny-sd"
    assert json.loads(metadata["components"]) == ["text_encoder", "unet"]
    plain = pipe_sample(fresh_pipe(tiny_sd_path))
    pipe = fresh_pipe(tiny_sd_path)
    load_svdiff(pipe, tmp_path)
    loaded, own = pipe_sample(pipe), module_sample(module)
    assert torch.allclose(own, loaded, atol=1e-4, rtol=0), (own - loaded).abs().max()
    assert (own - plain).abs().max() > 1e-2


@pytest.mark.parametrize("fault", ["unknown layer", "wrong length", "unknown component"])
def test_a_bad_shift_file_changes_nothing(fault: str, tiny_sd_path: Path, tmp_path: Path) -> None:
    _randomised_export(tmp_path)
    shifts = load_file(tmp_path / SVDIFF_SHIFTS)
    key = next(k for k in shifts if k.startswith("unet."))
    if fault == "unknown layer":
        shifts["unet.no_such_block.proj"] = torch.zeros(4)
        expected = "unet.no_such_block.proj, a layer this pipeline's unet lacks"
    elif fault == "wrong length":
        shifts[key] = torch.zeros(shifts[key].numel() + 1)
        expected = f"the spectral shift of {key} has shape"
    else:
        shifts["vae.decoder.conv_in"] = torch.zeros(4)
        expected = "its component 'vae' is not one of this pipeline's"
    save_file(shifts, str(tmp_path / SVDIFF_SHIFTS))
    pipe = fresh_pipe(tiny_sd_path)
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    text_before = {k: v.clone() for k, v in pipe.text_encoder.state_dict().items()}
    with pytest.raises(ValueError) as error:
        load_svdiff(pipe, tmp_path)
    assert expected in str(error.value)
    assert all(torch.equal(v, pipe.unet.state_dict()[k]) for k, v in before.items())
    assert all(torch.equal(v, pipe.text_encoder.state_dict()[k]) for k, v in text_before.items())
    assert "<v1>" not in pipe.tokenizer.get_vocab()


# ----- the config, SPL and DDLoss on top -------------------------------------------------------
def test_the_config_keeps_its_options(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import yaml

    monkeypatch.chdir(REPO_ROOT)
    written = yaml.safe_load((REPO_ROOT / CONFIG).read_text())
    alone = parsed(capsys, CONFIG)
    assert alone["model"]["class_path"].endswith("SVDiff")
    assert_holds(written["model"]["init_args"], alone["model"]["init_args"], "model")
    assert_holds(written["data"]["init_args"], alone["data"]["init_args"], "data")


def test_the_config_runs_with_spl_and_ddloss(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO_ROOT)
    regularizers = [
        {"class_path": "losses.spl.SemanticPreservationLoss", "init_args": {"weight": 1.0}},
        {"class_path": "losses.dd_loss.DenoisingDecoupleLoss", "init_args": {"weight": 0.2}},
    ]
    cli = main([
        "fit", "--config", CONFIG, "--config", TINY,
        "--trainer.default_root_dir", str(tmp_path),
        "--trainer.logger.init_args.save_dir", str(tmp_path),
        "--trainer.max_steps", "2", "--trainer.callbacks", "[]",
        "--model.init_args.regularizers", json.dumps(regularizers),
        "--data.init_args.class_images.folder", str(tmp_path / "class_images"),
    ])  # fmt: skip
    assert isinstance(cli.model, SVDiff) and cli.trainer.global_step == 2
    assert sorted(r.name for r in cli.model.regularizers) == ["dd", "spl"]
    events = EventAccumulator(str(run_folder(tmp_path)))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"train/loss/spl", "train/loss/dd", "train/loss/prior", "train/loss/denoise"} <= scalars
    moved = [p for n, p in cli.model.named_parameters() if n.endswith(".delta") and p.any()]
    assert moved  # the shifts trained under both losses


# ----- bad input -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"target_modules": ["norm1"]}, "a LayerNorm with a weight of shape"),
        ({"target_modules": ["no_such_layer"]}, "pattern 'no_such_layer' matches no layer"),
        ({"cut_mix_probability": 0.5}, "has 1 concept; add one"),
        ({"unmix_weight": 1.0}, "but cut_mix_probability is 0"),
    ],
)
def test_bad_options_are_one_clear_message(options: dict[str, Any], expected: str) -> None:
    with pytest.raises(ValueError) as error:
        build(**options)
    assert expected in str(error.value)


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["--model.init_args.target_modules", '["norm1"]'], "only nn.Linear and nn.Conv2d"),
        (["--model.init_args.cut_mix_probability", "0.5"], "has 1 concept; add one"),
    ],
)
def test_bad_options_through_train_py(
    options: list[str],
    expected: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(REPO_ROOT)
    monkeypatch.setattr(sys, "argv", sys.argv[:1])  # the command line sets it: put it back
    args = ["fit", "--config", CONFIG, "--config", TINY,
            "--trainer.default_root_dir", str(tmp_path), *options]  # fmt: skip
    assert_one_clear_line(run_from_command_line(args), capsys.readouterr().err, expected)


# ----- Cut-Mix-Unmix ---------------------------------------------------------------------------
def test_stitch_keeps_each_images_middle() -> None:
    left = torch.arange(2 * 3 * 7, dtype=torch.float32).reshape(2, 3, 7)
    right = -torch.arange(2 * 3 * 7, dtype=torch.float32).reshape(2, 3, 7)
    stitched = stitch(left, right)
    # width 7: 3 columns of the left image (its columns 2..4), 4 of the right (its 1..4)
    assert torch.equal(stitched[..., :3], left[..., 2:5])
    assert torch.equal(stitched[..., 3:], right[..., 1:5])
    assert cut_mix_prompt(ConceptSpec("<v1>", "dog"), ConceptSpec("<v2>", "cat")) == (
        "photo of a <v1> dog on the left and a <v2> cat on the right"
    )


def _two_concepts(tmp_path: Path, attach: bool = True, **options: Any) -> tuple[SVDiff, Any]:
    """Concept 0 the synthetic toy, concept 1 three plain blue photos."""
    folder = tmp_path / "blue"
    folder.mkdir()
    for index in range(3):
        Image.new("RGB", (40, 40), (0, 0, 255)).save(folder / f"{index}.png")
    second = ConceptData("<v2>", "cat", instance_data_dir=str(folder))
    datamodule = tiny_datamodule(additional_concepts=[second])
    module = SVDiff(concepts=datamodule.concepts, optimizer=optimizer_with_lr(1e-2), **options)
    if attach:
        module.attach_datamodule(datamodule, "fit")
    return module, datamodule


def test_a_cut_mix_unmix_fit_trains_only_the_shifts(tmp_path: Path) -> None:
    """Through the Trainer: setup hands the photos over, the stitched steps train."""
    options = {"cut_mix_probability": 0.5, "unmix_weight": 1.0}
    module, datamodule = _two_concepts(tmp_path, attach=False, **options)
    assert_only_trainable_changed(module, datamodule, tmp_path / "run", steps=2)


def test_cut_mix_stitches_halves_with_the_prompt(tmp_path: Path) -> None:
    module, _ = _two_concepts(tmp_path, cut_mix_probability=1.0)
    count = 8
    own = torch.linspace(-0.5, 0.5, count * 3 * 32 * 32).reshape(count, 3, 32, 32)
    batch = {
        "pixel_values": own,
        "prompts": ["a photo of a <v1> toy"] * count,
        "loss_mask": torch.ones(count, 1, 32, 32),
        "concept_index": torch.zeros(count, dtype=torch.long),
        "cache_key": [f"0/{i}/0" for i in range(count)],
        "sample_key": list(range(count)),
    }
    mixed, stitched = module.cut_mix(batch)
    assert [s.row for s in stitched] == list(range(count))  # probability 1: every sample
    blue = torch.tensor([-1.0, -1.0, 1.0])[:, None, None]  # (0, 0, 255) in [-1, 1]
    sides = set()
    for item in stitched:
        image, row = mixed["pixel_values"][item.row], item.row
        if item.left == 0:
            assert mixed["prompts"][row] == f"photo of a {TOY} on the left and a {CAT} on the right"
            assert torch.equal(image[..., :16], own[row][..., 8:24])
            assert torch.allclose(image[..., 16:], blue.expand(3, 32, 16), atol=1e-2)
        else:
            assert mixed["prompts"][row] == f"photo of a {CAT} on the left and a {TOY} on the right"
            assert torch.allclose(image[..., :16], blue.expand(3, 32, 16), atol=1e-2)
            assert torch.equal(image[..., 16:], own[row][..., 8:24])
        sides.add(item.left)
        assert mixed["cache_key"][row].startswith(f"cut-mix/0/{row}/0/1/")
    assert sides == {0, 1}
    assert torch.equal(batch["pixel_values"], own)  # the input batch is left as it was
    again, _ = module.cut_mix(batch)  # the same draws for the same step and samples
    assert torch.equal(again["pixel_values"], mixed["pixel_values"])


def _independent_unmix(
    maps: list[torch.Tensor], latent: tuple[int, int], left: torch.Tensor, right: torch.Tensor
) -> float:
    layer_values = []
    for probs in maps:
        count, queries, length = probs.shape
        scale = int(round((latent[0] * latent[1] / queries) ** 0.5))
        height, width = -(-latent[0] // scale), -(-latent[1] // scale)
        samples = []
        for n in range(count):
            values = []
            for y in range(height):
                for x in range(width):
                    in_left, in_right = x + 1 <= width / 2, x >= width / 2
                    for p in range(length):
                        if (in_right and left[n, p]) or (in_left and right[n, p]):
                            values.append(float(probs[n, y * width + x, p]) ** 2)
            samples.append(sum(values) / len(values))
        layer_values.append(sum(samples) / count)
    return sum(layer_values) / len(layer_values)


def test_unmix_loss_matches_an_independent_computation() -> None:
    generator = torch.Generator().manual_seed(0)
    latent = (6, 10)  # layers at 6x10 and 3x5: an odd width, whose middle column is neither half
    maps = [
        torch.randn(2, 60, 7, generator=generator).softmax(-1),
        torch.randn(2, 15, 7, generator=generator).softmax(-1),
    ]
    left = torch.zeros(2, 7, dtype=torch.bool)
    right = torch.zeros(2, 7, dtype=torch.bool)
    left[0, 2], right[0, 4], left[1, 5], right[1, 1], right[1, 2] = True, True, True, True, True
    want = _independent_unmix(maps, latent, left, right)
    assert unmix_loss(maps, latent, left, right).item() == pytest.approx(want, rel=1e-6)
    # Attention on the right side: no loss for the right-hand concept's own tokens.
    own_side = torch.zeros(1, 15, 7)
    own_side.reshape(1, 3, 5, 7)[:, :, 3:, 4] = 1.0
    own_side[..., 0] = 1 - own_side[..., 4]
    assert unmix_loss([own_side], (3, 5), left[:1], right[:1]).item() == 0.0


def test_unmix_reaches_queries_and_keys_of_cross_attention_only(tmp_path: Path) -> None:
    module, _ = _two_concepts(tmp_path, cut_mix_probability=1.0, unmix_weight=1.0)
    generator = torch.Generator().manual_seed(1)
    batch = {
        "pixel_values": torch.rand(2, 3, 32, 32, generator=generator) * 2 - 1,
        "prompts": ["a photo of a <v1> toy", "a photo of a <v2> cat"],
        "loss_mask": torch.ones(2, 1, 32, 32),
        "concept_index": torch.tensor([0, 1]),
        "cache_key": ["", ""],
        "sample_key": [0, 1],
    }
    losses = module.compute_losses(batch, module.sample_draws(batch, 0))
    unmix = losses["parts"]["unmix"]
    assert unmix.item() > 0
    reached = parameters_reached(module, unmix)
    # The maps read every key projection, and every layer before each query; nothing after the
    # last cross-attention's probabilities (its values and output, the UNet's last layers).
    keys = [n for n, _ in module.named_parameters() if ".attn2.to_k." in n and n.endswith("delta")]
    assert keys and set(keys) <= reached
    last = [n for n in keys if n.startswith("unet.up_blocks.")][-1].split(".attn2.")[0]
    for unreached in (f"{last}.attn2.to_v.", f"{last}.attn2.to_out.0.", "unet.conv_out."):
        assert not any(n.startswith(unreached) for n in reached), unreached
