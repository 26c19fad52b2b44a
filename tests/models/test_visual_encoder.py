"""VisualEncoder: the mapper's formula, per-sample injection, a new subject without tuning,
the export and its loader, training and exact resume."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from baseline_checks import (
    assert_only_trainable_changed,
    assert_resume_is_exact,
    assert_trained_stay_fp32_under_bf16,
)
from export_sampling import fresh_pipe, pipe_sample
from helpers import optimizer_with_lr, snapshot, tiny_datamodule
from PIL import Image
from safetensors.torch import save_file
from transformers import CLIPModel

from core.concept import ConceptSpec
from datamodules.personalization import ConceptData
from models import VisualEncoder
from models.subject_encoder import TokenMapper, load_image_encoder
from models.visual_encoder import (
    VISUAL_ENCODER_WEIGHTS,
    install_subject,
    load_subject_encoder,
)
from preparation.synthetic_concept import draw_synthetic_concept
from pretrained.tiny_sd import ensure_tiny_clip

PROMPT = "a photo of a <v1> toy"
STEPS, GUIDANCE = 3, 6.0


def _datamodule(**overrides: Any) -> Any:
    subjects = [ConceptData("<v1>"), ConceptData("<v1>")]  # synthetic, other seeds
    return tiny_datamodule(shared_tokens=True, additional_concepts=subjects, **overrides)


def _build() -> tuple[VisualEncoder, Any]:
    datamodule = _datamodule()
    module = VisualEncoder(concepts=datamodule.concepts, optimizer=optimizer_with_lr(1e-2))
    return module, datamodule


def _randomise(module: VisualEncoder, seed: int) -> None:
    """A mapper far from its start, so subjects map to clearly different vectors."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.subject_encoder.mapper.parameters():
            param.copy_(torch.randn(param.shape, generator=generator))


@pytest.fixture(scope="module")
def module() -> VisualEncoder:
    built = VisualEncoder(concepts=[ConceptSpec("<v1>", "toy")])
    _randomise(built, seed=0)
    return built


# ----- the parts -----------------------------------------------------------------------------
def test_mapper_is_a_projection_then_layer_norm() -> None:
    torch.manual_seed(0)
    mapper = TokenMapper(feature_dim=5, token_dim=6, num_vectors=3)
    with torch.no_grad():
        mapper.norm.weight.uniform_(0.5, 2.0)
        mapper.norm.bias.normal_()
    features = torch.randn(2, 5)
    weight, bias = mapper.proj.weight.detach(), mapper.proj.bias.detach()
    gain, shift = mapper.norm.weight.detach(), mapper.norm.bias.detach()
    expected = torch.empty(2, 3, 6)
    for n in range(2):
        flat = [sum(weight[o, i] * features[n, i] for i in range(5)) + bias[o] for o in range(18)]
        for v in range(3):
            x = torch.stack(flat[v * 6 : (v + 1) * 6])
            mean = x.sum() / 6
            var = ((x - mean) ** 2).sum() / 6
            expected[n, v] = (x - mean) / torch.sqrt(var + 1e-5) * gain + shift
    assert torch.allclose(mapper(features), expected, atol=1e-5)


def test_mapper_starts_near_the_initializer_word(module: VisualEncoder) -> None:
    fresh = VisualEncoder(concepts=[ConceptSpec("<v1>", "toy")])
    norm = fresh.subject_encoder.mapper.norm
    base = fresh.concept_tokens.embedding.base.weight
    toy = fresh.tokenizer("toy", add_special_tokens=False).input_ids[0]
    assert torch.equal(norm.bias, base[toy])
    assert torch.allclose(norm.weight, base.std(0))
    assert fresh.subject_encoder.mapper.proj.weight.dtype == torch.float32


def test_image_encoder_from_a_clip_model_folder_is_its_vision_tower() -> None:
    encoder, mean, std = load_image_encoder("tiny-clip")
    clip = CLIPModel.from_pretrained(ensure_tiny_clip())
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ours = encoder(pixel_values=pixels).image_embeds
        theirs = clip.get_image_features(pixel_values=pixels)
    theirs = theirs if isinstance(theirs, torch.Tensor) else theirs.pooler_output
    assert torch.allclose(ours, theirs, atol=1e-6)
    assert mean == pytest.approx([0.48145466, 0.4578275, 0.40821073])
    assert std == pytest.approx([0.26862954, 0.26130258, 0.27577711])


def test_image_features_normalise_like_clip(module: VisualEncoder) -> None:
    pixels = torch.rand(2, 3, 32, 32) * 2 - 1
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    clip_input = ((pixels + 1) / 2 - mean) / std
    with torch.no_grad():
        expected = module.subject_encoder.image_encoder(pixel_values=clip_input).image_embeds
    assert torch.allclose(module.subject_encoder.image_features(pixels), expected, atol=1e-6)


# ----- injection -----------------------------------------------------------------------------


def _pipe_states(path: Path, vectors: torch.Tensor, prompt: str) -> torch.Tensor:
    """Text states from diffusers with ``vectors`` loaded as an ordinary token."""
    pipe = install_subject(fresh_pipe(path), vectors, "<v1>")
    return pipe.encode_prompt(prompt, "cpu", 1, False)[0]


def test_each_prompt_reads_its_own_samples_vectors(
    module: VisualEncoder, tiny_sd_path: Path
) -> None:
    photos = [draw_synthetic_concept(2, 64, seed=s) for s in (10, 11)]
    vectors = torch.stack([module.embed_subject(p) for p in photos])  # two samples
    assert vectors.shape == (2, 4, 32) and not torch.allclose(vectors[0], vectors[1])
    prompts = [PROMPT, PROMPT, "a toy", PROMPT]  # conditions stacked as [cond 1 | cond 2]
    with torch.no_grad(), module.injecting(vectors):
        states = module.encode_text(prompts).hidden_states
    for row, sample in ((0, 0), (1, 1), (3, 1)):
        expected = _pipe_states(tiny_sd_path, vectors[sample], PROMPT)[0]
        assert torch.allclose(states[row], expected, atol=1e-5), row
    with torch.no_grad():
        plain = module.encode_text(["a toy"]).hidden_states  # no token: no subject needed
    assert torch.allclose(states[2], plain[0], atol=1e-6)


def test_a_prompt_with_the_token_needs_a_subject() -> None:
    fresh = VisualEncoder(concepts=[ConceptSpec("<v1>", "toy")])
    with pytest.raises(ValueError, match="no subject for the concept token"):
        fresh.encode_text([PROMPT])


def test_gradients_reach_only_the_mapper(module: VisualEncoder) -> None:
    pixels = torch.rand(2, 3, 32, 32) * 2 - 1
    with module.injecting(module.subject_encoder(pixels)):
        module.encode_text([PROMPT, PROMPT]).hidden_states.square().sum().backward()
    with_grad = {n for n, p in module.named_parameters() if p.grad is not None}
    assert with_grad == {f"subject_encoder.mapper.{n}" for n, _ in
                         module.subject_encoder.mapper.named_parameters()}  # fmt: skip
    module.zero_grad(set_to_none=True)


# ----- a new subject, export and loader ------------------------------------------------------
@pytest.mark.smoke
def test_new_subject_without_training_and_export_round_trip(
    module: VisualEncoder, tmp_path: Path, tiny_sd_path: Path
) -> None:
    before = snapshot(module)
    photos_a = draw_synthetic_concept(3, 64, seed=21)
    noise = torch.Generator().manual_seed(22)  # a very different subject: coloured noise
    photos_b = [
        Image.fromarray(torch.randint(0, 256, (64, 64, 3), generator=noise).byte().numpy())
        for _ in range(3)
    ]
    vectors_a, vectors_b = module.embed_subject(photos_a), module.embed_subject(photos_b)
    each = torch.stack([module.embed_subject([p]) for p in photos_a])
    assert torch.allclose(vectors_a, each.mean(0), atol=1e-6)  # the mean over photos
    module.set_subject(vectors_a)
    images_a = module.generate([PROMPT], seed=0, num_inference_steps=STEPS, guidance_scale=GUIDANCE)
    module.set_subject(vectors_b)
    images_b = module.generate([PROMPT], seed=0, num_inference_steps=STEPS, guidance_scale=GUIDANCE)
    module.set_subject(None)
    assert (images_a - images_b).abs().max() > 1e-2  # generation follows the subject
    after = module.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # nothing trained

    written = module.export(tmp_path)
    assert written == [tmp_path / VISUAL_ENCODER_WEIGHTS]
    encoder, token = load_subject_encoder(tmp_path)
    assert token == "<v1>"
    assert torch.allclose(encoder.embed_subject(photos_a), vectors_a, atol=1e-6)
    pipe = install_subject(fresh_pipe(tiny_sd_path), encoder.embed_subject(photos_a), token)
    loaded = pipe_sample(pipe)
    assert torch.allclose(images_a, loaded, atol=1e-4, rtol=0), (images_a - loaded).abs().max()


# ----- bad input -----------------------------------------------------------------------------
def test_bad_settings_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="one token.*shared_tokens: true"):
        VisualEncoder(concepts=[ConceptSpec("<v1>", "toy"), ConceptSpec("<v2>", "dog")])
    with pytest.raises(ValueError, match="Set train_tokens: false"):
        VisualEncoder(concepts=[ConceptSpec("<v1>", "toy")], train_tokens=True)
    save_file({"<v1>": torch.zeros(1, 32)}, str(tmp_path / VISUAL_ENCODER_WEIGHTS))
    with pytest.raises(ValueError, match="not a VisualEncoder export"):
        load_subject_encoder(tmp_path)  # e.g. a textual-inversion file


# ----- training ------------------------------------------------------------------------------
def test_only_the_mapper_trains(tmp_path: Path) -> None:
    module, datamodule = _build()
    assert module.trainable_state_keys() == {
        "subject_encoder.mapper.proj.weight",
        "subject_encoder.mapper.proj.bias",
        "subject_encoder.mapper.norm.weight",
        "subject_encoder.mapper.norm.bias",
    }
    assert_only_trainable_changed(module, datamodule, tmp_path)
    assert "reference_pixel_values" in datamodule.provided_batch_keys()
    assert not module.subject_encoder.image_encoder.training


def test_resume_from_a_mid_epoch_checkpoint_is_exact(tmp_path: Path) -> None:
    assert_resume_is_exact(_build, tmp_path)


def test_trained_weights_stay_fp32_under_bf16_mixed(tmp_path: Path) -> None:
    assert_trained_stay_fp32_under_bf16(*_build(), tmp_path)
