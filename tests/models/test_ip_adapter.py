"""IPAdapter: what trains, exact resume, the decoupled attention against a hand computation, the
export in diffusers' load_ip_adapter, the seeded dropout, ACCORD's losses in a short fit, and
bad face folders. Faces: scikit-image's astronaut (crops and flips)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from baseline_checks import assert_only_trainable_changed, assert_resume_is_exact
from diffusers.models.attention_processor import Attention, IPAdapterAttnProcessor2_0
from export_sampling import STEPS, fresh_pipe, pipe_sample
from helpers import REPO_ROOT, optimizer_with_lr, tiny_datamodule
from PIL import Image
from safetensors.torch import load_file
from skimage import data as skdata
from test_user_errors import assert_one_clear_line
from transformers import CLIPImageProcessor

from core.concept import ConceptSpec
from models.ip_adapter import IP_ADAPTER_WEIGHTS, IPAdapter, load_ip_adapter_export
from models.ip_adapter_losses import ImageDenoisingDecoupleLoss, ImagePriorDecoupleLoss
from models.subject_encoder import load_image_encoder
from step.draws import SampleDraws
from train import main, run_from_command_line

GUIDANCE = 6.0
CONFIG = "configs/accord/ip_adapter.yaml"
DD_PD = "configs/accord/ip_adapter_dd_pd.yaml"


def faces() -> list[Image.Image]:
    """Real faces: the astronaut photo's face region, cropped and flipped four ways."""
    photo = Image.fromarray(skdata.astronaut())
    boxes = [(140, 20, 300, 180), (120, 0, 320, 200), (160, 40, 280, 160), (100, 10, 340, 250)]
    crops = [photo.crop(box).resize((64, 64), Image.Resampling.BICUBIC) for box in boxes]
    return crops + [c.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for c in crops]


def face_folder(root: Path) -> Path:
    folder = root / "faces"
    folder.mkdir(parents=True, exist_ok=True)
    scenes = ["on a beach", "in a snowy forest", "in front of a city skyline", "in a library"]
    lines = []
    for i, face in enumerate(faces()):
        face.save(folder / f"{i:02d}.png")
        lines.append(f"{i:02d}.png: a {{}} {scenes[i % len(scenes)]}")
    (folder / "captions.txt").write_text("\n".join(lines) + "\n")  # ACCORD's c_g
    return folder


def _build(**options: Any) -> tuple[IPAdapter, Any]:
    datamodule = tiny_datamodule(class_word="person")
    module = IPAdapter(concepts=datamodule.concepts, optimizer=optimizer_with_lr(1e-2), **options)
    return module, datamodule


def _randomise(module: IPAdapter, seed: int) -> None:
    """Trained weights far from their start, so the image visibly steers generation."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if param.requires_grad:
                scale = 0.3 if "to_" in name and "_ip" in name else 1.0
                param.copy_(torch.randn(param.shape, generator=generator) * scale)


@pytest.fixture(scope="module")
def module() -> IPAdapter:
    built = IPAdapter(concepts=[ConceptSpec("<v1>", "person")])
    _randomise(built, seed=0)
    return built


# ----- what trains ---------------------------------------------------------------------------
def test_only_the_projection_and_the_new_key_values_train(tmp_path: Path) -> None:
    module, datamodule = _build()
    cross = [n for n, m in module.unet.named_modules()
             if isinstance(m, Attention) and m.is_cross_attention]  # fmt: skip
    expected = {k for k in module.state_dict() if k.startswith("image_proj.")}
    expected |= {f"unet.{n}.processor.to_{kv}_ip.0.weight" for n in cross for kv in "kv"}
    assert cross and module.trainable_state_keys() == expected
    assert module.image_proj.latents.shape == (1, 16, 64)
    assert_only_trainable_changed(module, datamodule, tmp_path)
    assert not module.image_encoder.training


def test_new_key_values_start_as_the_text_ones() -> None:
    module, _ = _build()
    for name, layer in module.unet.named_modules():
        if isinstance(layer, Attention) and layer.is_cross_attention:
            processor = layer.processor
            assert isinstance(processor, IPAdapterAttnProcessor2_0), name
            assert torch.equal(processor.to_k_ip[0].weight, layer.to_k.weight)
            assert torch.equal(processor.to_v_ip[0].weight, layer.to_v.weight)


def test_resume_is_exact_with_the_same_dropout(tmp_path: Path) -> None:
    logs: list[dict[int, tuple[list[int], list[bool], list[bool]]]] = []

    def build() -> tuple[IPAdapter, Any]:
        module, datamodule = _build(text_drop_rate=0.2, image_drop_rate=0.2, both_drop_rate=0.2)
        log: dict[int, tuple[list[int], list[bool], list[bool]]] = {}
        logs.append(log)
        drawn = module.dropout

        def recorded(draws: SampleDraws) -> tuple[torch.Tensor, torch.Tensor]:
            text, image = drawn(draws)
            log[module.global_step] = (list(draws.keys), text.tolist(), image.tolist())
            return text, image

        module.dropout = recorded  # type: ignore[method-assign]
        return module, datamodule

    assert_resume_is_exact(build, tmp_path)
    straight, _, resumed = logs
    assert sorted(resumed) == [3, 4, 5]
    assert all(resumed[step] == straight[step] for step in resumed)
    assert any(any(straight[s][1]) or any(straight[s][2]) for s in straight)  # drops happened


# ----- the decoupled attention ---------------------------------------------------------------
def test_decoupled_attention_is_text_attention_plus_scaled_image_attention(
    module: IPAdapter,
) -> None:
    layer = next(m for m in module.unet.modules()
                 if isinstance(m, Attention) and m.is_cross_attention)  # fmt: skip
    processor = layer.processor
    torch.manual_seed(1)
    x, text, image = torch.randn(2, 6, 32), torch.randn(2, 5, 32), torch.randn(2, 16, 32)
    old_scale = processor.scale
    processor.scale = [0.7]
    try:
        with torch.no_grad():
            got = layer(x, encoder_hidden_states=(text, [image]))
    finally:
        processor.scale = old_scale
    heads = layer.heads

    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        d = q.shape[-1] // heads
        q, k, v = (t.unflatten(-1, (heads, d)).permute(0, 2, 1, 3) for t in (q, k, v))
        weights = torch.softmax(q @ k.transpose(-1, -2) / d**0.5, dim=-1)
        return (weights @ v).permute(0, 2, 1, 3).reshape(x.shape[0], x.shape[1], heads * d)

    w = {n: p.detach() for n, p in layer.named_parameters()}
    q = x @ w["to_q.weight"].T
    mixed = attend(q, text @ w["to_k.weight"].T, text @ w["to_v.weight"].T) + 0.7 * attend(
        q,
        image @ w["processor.to_k_ip.0.weight"].T,
        image @ w["processor.to_v_ip.0.weight"].T,
    )
    expected = mixed @ w["to_out.0.weight"].T + w["to_out.0.bias"]
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()


# ----- zero-shot generation and the export ---------------------------------------------------
@pytest.mark.smoke
def test_export_loads_in_diffusers_and_generates_the_same_images(
    module: IPAdapter, tmp_path: Path, tiny_sd_path: Path
) -> None:
    face, other = faces()[0], faces()[3]
    ours = module.generate(["a photo of a <v1> person"], seed=0, num_inference_steps=STEPS,
                           guidance_scale=GUIDANCE, reference_image=face)  # fmt: skip
    theirs_other = module.generate(["a photo of a person"], seed=0, num_inference_steps=STEPS,
                                   guidance_scale=GUIDANCE, reference_image=other)  # fmt: skip
    assert (ours - theirs_other).abs().max() > 1e-2  # the image steers generation

    assert module.export(tmp_path) == [tmp_path / IP_ADAPTER_WEIGHTS]
    stored = load_file(str(tmp_path / IP_ADAPTER_WEIGHTS))
    assert {k.split(".")[0] for k in stored} == {"image_proj", "ip_adapter"}
    assert "ip_adapter.1.to_k_ip.weight" in stored and "image_proj.latents" in stored

    pipe = fresh_pipe(tiny_sd_path)  # diffusers' own loader, the encoder set by hand
    encoder, _, _ = load_image_encoder("tiny-clip")
    pipe.register_modules(
        image_encoder=encoder, feature_extractor=CLIPImageProcessor(size=32, crop_size=32)
    )
    pipe.load_ip_adapter(str(tmp_path), subfolder="", weight_name=IP_ADAPTER_WEIGHTS,
                         image_encoder_folder=None)  # fmt: skip
    loaded = pipe_sample(pipe, "a photo of a person", ip_adapter_image=face)
    assert torch.allclose(ours, loaded, atol=1e-4, rtol=0), (ours - loaded).abs().max()

    helper = load_ip_adapter_export(fresh_pipe(tiny_sd_path), tmp_path)
    again = pipe_sample(helper, "a photo of a person", ip_adapter_image=face)
    assert torch.allclose(ours, again, atol=1e-4, rtol=0)


# ----- dropout -------------------------------------------------------------------------------
@pytest.mark.parametrize("rates", [(0.05, 0.05, 0.05), (0.1, 0.2, 0.3)])
def test_dropout_rates_over_many_draws(module: IPAdapter, rates: tuple[float, ...]) -> None:
    count = 20_000
    previous = module.drop_rates
    module.drop_rates = dict(zip(("text", "image", "both"), rates))
    try:
        text, image = module.dropout(SampleDraws(7, range(count), 0, "cpu"))
        again = module.dropout(SampleDraws(7, range(count), 0, "cpu"))
        other_seed = module.dropout(SampleDraws(8, range(count), 0, "cpu"))
    finally:
        module.drop_rates = previous
    shares = {
        "text": float((text & ~image).float().mean()),
        "image": float((image & ~text).float().mean()),
        "both": float((text & image).float().mean()),
    }
    for (name, share), rate in zip(shares.items(), rates):
        sigma = (rate * (1 - rate) / count) ** 0.5
        assert abs(share - rate) < 4 * sigma, (name, share, rate)
    assert torch.equal(again[0], text) and torch.equal(again[1], image)  # keyed, repeatable
    assert not torch.equal(other_seed[0], text)


def test_dropped_samples_get_the_empty_prompt_and_the_zero_image() -> None:
    module, datamodule = _build(text_drop_rate=0.0, image_drop_rate=0.0, both_drop_rate=1.0)
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    seen: dict[str, Any] = {}
    denoise = module.denoise

    def spy(batch: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        seen["prompts"], seen["tokens"] = list(batch["prompts"]), module._tokens.detach()
        return denoise(batch, *args, **kwargs)

    module.denoise = spy  # type: ignore[method-assign]
    with torch.no_grad():
        module.compute_losses(batch, module.sample_draws(batch, 0))
        zero = module.image_tokens(torch.zeros(1, 3, 32, 32))
    assert seen["prompts"] == ["", ""]
    assert torch.allclose(seen["tokens"], zero.expand(2, -1, -1), atol=1e-6)


# ----- ACCORD's losses -----------------------------------------------------------------------
def test_dd_runs_cg_and_empty_without_the_image(module: IPAdapter) -> None:
    calls: list[torch.Tensor] = []
    hook = module.unet.register_forward_pre_hook(
        lambda m, a, k: calls.append(k["encoder_hidden_states"][1][0].detach()), with_kwargs=True
    )  # runs after the module's own hook, which pairs the states with the tokens
    pixels = torch.rand(2, 3, 32, 32) * 2 - 1
    batch = {"pixel_values": pixels, "prompts": ["a photo of a <v1> person"] * 2,
             "caption_full": ["a <v1> person on a beach"] * 2,
             "caption_concept": ["<v1> person"] * 2,
             "caption_general": ["a on a beach"] * 2,
             "caption_superclass": ["person"] * 2}  # fmt: skip
    loss = ImageDenoisingDecoupleLoss()
    try:
        with torch.no_grad():
            tokens = module.image_tokens(module.clip_input(pixels))
            zero = module.unconditional_tokens()
            with module.conditioned_on(tokens):
                record = module.denoise(batch, module.sample_draws(batch, 0))
                value = loss(record, module)
    finally:
        hook.remove()
    main_call, with_image, without_image = calls
    assert torch.allclose(main_call, tokens, atol=1e-6)
    assert torch.allclose(with_image, torch.cat([tokens, tokens]), atol=1e-6)  # full, concept
    assert torch.allclose(without_image, zero.expand(4, -1, -1), atol=1e-6)  # general, empty
    assert torch.isfinite(value)


def test_pd_concept_feature_is_the_projected_mean_image_token(module: IPAdapter) -> None:
    pixels = torch.rand(2, 3, 32, 32) * 2 - 1
    tokens = module.image_tokens(module.clip_input(pixels))
    with module.conditioned_on(tokens):
        features = module.concept_features()
    features.square().sum().backward()
    projection = module.text_projection()
    expected = tokens.detach().mean(1) @ projection.weight.detach().T
    if projection.bias is not None:
        expected = expected + projection.bias.detach()
    assert torch.allclose(features.detach(), expected, atol=1e-5)
    with_grad = {n for n, p in module.named_parameters() if p.grad is not None}
    assert with_grad and all(n.startswith("image_proj.") for n in with_grad)
    module.zero_grad(set_to_none=True)


def test_image_losses_refuse_another_baseline() -> None:
    from models.textual_inversion import TextualInversion

    other = TextualInversion(concepts=[ConceptSpec("<v1>", "person")])
    for loss in (ImageDenoisingDecoupleLoss(), ImagePriorDecoupleLoss()):
        with pytest.raises(ValueError, match="models.ip_adapter.IPAdapter"):
            loss.prepare(other)


@pytest.mark.slow
def test_config_with_dd_and_pd_fits_on_faces(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO_ROOT)
    args = ["fit", "--config", CONFIG, "--config", DD_PD, "--config", "configs/tiny.yaml",
            "--data.init_args.instance_data_dir", str(face_folder(tmp_path)),
            "--trainer.default_root_dir", str(tmp_path / "runs"),
            "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
            "--trainer.max_steps", "2", "--trainer.callbacks", "[]"]  # fmt: skip
    cli = main(args)
    assert cli.trainer.global_step == 2
    assert sorted(r.name for r in cli.model.regularizers) == ["dd", "pd"]
    metrics = cli.trainer.callback_metrics
    assert {"train/loss/dd", "train/loss/pd", "train/loss/denoise"} <= set(metrics)
    assert all(bool(torch.isfinite(metrics[k])) for k in ("train/loss/dd", "train/loss/pd"))


# ----- bad input -----------------------------------------------------------------------------
BAD_FOLDERS: dict[str, tuple[Callable[[Path], Path], str]] = {
    "missing": (lambda r: r / "nowhere", "does not exist; set instance_data_dir"),
    "without images": (lambda r: (r / "empty").mkdir() or r / "empty", "holds no images"),
}


@pytest.mark.parametrize("case", sorted(BAD_FOLDERS))
def test_bad_face_folder_is_one_clear_line(
    case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    make, expected = BAD_FOLDERS[case]
    monkeypatch.chdir(REPO_ROOT)
    monkeypatch.setattr(sys, "argv", sys.argv[:1])
    args = ["fit", "--config", CONFIG, "--config", "configs/tiny.yaml",
            "--data.init_args.instance_data_dir", str(make(tmp_path)),
            "--trainer.default_root_dir", str(tmp_path / "runs")]  # fmt: skip
    assert_one_clear_line(run_from_command_line(args), capsys.readouterr().err, expected)


def test_bad_settings_are_clear_errors() -> None:
    concepts = [ConceptSpec("<v1>", "person")]
    with pytest.raises(ValueError, match="train_tokens: false"):
        IPAdapter(concepts=concepts, train_tokens=True)
    with pytest.raises(ValueError, match="sum to at most 1"):
        IPAdapter(concepts=concepts, text_drop_rate=0.6, image_drop_rate=0.6)
    with pytest.raises(ValueError, match="prior_loss_weight: 0"):
        IPAdapter(concepts=concepts, prior_loss_weight=1.0)

