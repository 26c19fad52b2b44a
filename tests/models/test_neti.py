"""NeTI: the mapper's input encoding and output, the textual bypass, per-(t, layer) states,
the export in diffusers, training only the mapper, exact resume."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from baseline_checks import assert_only_trainable_changed, assert_resume_is_exact
from export_sampling import PROMPT, STEPS, fresh_pipe, module_sample, pipe_sample
from helpers import optimizer_with_lr, tiny_datamodule

from core.concept import ConceptSpec
from models import NeTI
from models.neti import NETI_MAPPER, load_neti, neti_call_kwargs

LAYERS = 4  # the tiny UNet's cross-attention layers


@pytest.fixture(scope="module")
def neti() -> NeTI:
    module = NeTI(concepts=[ConceptSpec("<v1>", "toy")])
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # far from the initialisation, so every (t, l) differs visibly
        for param in module.neti_mapper.parameters():
            param.add_(0.5 * torch.randn(param.shape, generator=generator))
    return module.eval()


def _encoding_by_hand(frequencies: torch.Tensor, t: float, layer: float) -> torch.Tensor:
    """The paper's random Fourier features of (t, l), unit norm, written out per frequency."""
    values = [frequencies[k, 0] * t + frequencies[k, 1] * layer for k in range(len(frequencies))]
    features = [math.sin(v) for v in values] + [math.cos(v) for v in values]
    vector = torch.tensor(features)
    return vector / vector.norm()


def test_the_input_encoding_and_its_anchors(neti: NeTI) -> None:
    mapper = neti.neti_mapper
    frequencies = mapper.frequencies
    assert frequencies.shape == (1024, 2)
    # The columns' scales: sigma_t = 0.03 for time, sigma_l = 2.0 for the layer.
    assert 0.02 < float(frequencies[:, 0].std()) < 0.04
    assert 1.5 < float(frequencies[:, 1].std()) < 2.5
    fresh = NeTI(concepts=[ConceptSpec("<v1>", "toy")]).neti_mapper
    # The first layer starts as the anchors' encodings: t in {0, 100, ..., 900} x l in 0..3.
    assert fresh.input_layer.weight.shape == (10 * LAYERS, 2048)
    for row, (t, layer) in enumerate([(t, k) for t in range(0, 1000, 100) for k in range(4)]):
        expected = _encoding_by_hand(frequencies, t, layer)
        assert torch.allclose(fresh.input_layer.weight[row], expected, atol=1e-5), (t, layer)


def test_the_output_has_the_class_words_norm_and_depends_on_t_and_layer(neti: NeTI) -> None:
    ids = neti.tokenizer("toy", add_special_tokens=False).input_ids
    norm = float(neti.concept_tokens.embedding.base.weight[ids[0]].norm())
    t = torch.tensor([0, 500, 500, 999])
    layers = torch.tensor([0, 0, 3, 3])
    word, bypass = neti.neti_mapper(t, layers)
    assert word.shape == bypass.shape == (4, 32)
    assert torch.allclose(torch.cat([word, bypass], -1).norm(dim=-1), torch.full((4,), norm))
    assert all(not torch.allclose(word[i], word[j]) for i in range(4) for j in range(i))


def test_nested_dropout_keeps_a_prefix_of_the_hidden_features(neti: NeTI) -> None:
    mapper = neti.neti_mapper
    t, layers = torch.tensor([300, 300]), torch.tensor([1, 1])
    keep = torch.tensor([5, 128])
    word, _ = mapper(t, layers, keep)
    hidden = mapper.features(t, layers)
    hidden[0, 5:] = 0
    output = mapper.output_layer(hidden)
    output = output / output.norm(dim=-1, keepdim=True) * mapper.norm_scale
    assert torch.allclose(word, output[:, :32], atol=1e-6)
    assert torch.allclose(word[1], mapper(t, layers)[0][1])  # keep = all: unchanged


def test_a_layers_states_are_the_prompt_with_the_word_vector_plus_the_bypass(neti: NeTI) -> None:
    """Independently: the token's own row set to the mapper's word vector, the encoder's
    output, the bypass (rescaled to that output's norm, x 0.2) added at the token, then CLIP's
    final layer norm."""
    t, layer = 420, 2
    ids = neti.tokenize([PROMPT])
    states = neti.text().layer_states(ids, torch.tensor([t]), [layer])[0]
    word, bypass = neti.neti_mapper(torch.tensor([t]), torch.tensor([layer]))
    vectors = neti.concept_tokens.embedding.vectors
    saved = vectors.detach().clone()
    try:
        with torch.no_grad():
            vectors.copy_(word)
            hidden = neti.text_encoder(ids, output_hidden_states=True).hidden_states[-1][0]
    finally:
        with torch.no_grad():
            vectors.copy_(saved)
    position = int((ids[0] == neti.token_id).nonzero()[0, 0])
    direction = bypass[0] / bypass[0].norm()
    hidden = hidden.clone()
    hidden[position] = hidden[position] + 0.2 * hidden[position].norm() * direction
    final_norm = getattr(neti.text_encoder, "text_model", neti.text_encoder).final_layer_norm
    assert torch.allclose(states[0], final_norm(hidden), atol=1e-5)


def test_the_packed_states_hold_each_layer_at_each_prompts_timestep(neti: NeTI) -> None:
    ids = neti.tokenize([PROMPT, "a photo of a toy"])
    text = neti.text()
    packed = text.conditioning(ids, torch.tensor([100, 900])).view(2, LAYERS, 77, 32)
    for layer in range(LAYERS):
        alone = text.layer_states(ids[:1], torch.tensor([100]), [layer])[0]
        assert torch.allclose(packed[0, layer], alone[0], atol=1e-6)
    assert not torch.allclose(packed[0, 0], packed[0, 1], atol=1e-4)
    assert all(torch.equal(packed[1, 0], packed[1, k]) for k in range(LAYERS))  # no token
    later = text.conditioning(ids, torch.tensor([900, 900])).view(2, LAYERS, 77, 32)
    assert not torch.allclose(packed[0], later[0], atol=1e-4)
    assert torch.equal(packed[1], later[1])


def test_each_sample_is_denoised_with_its_own_timesteps_states(neti: NeTI) -> None:
    encoding = neti.encode_text([PROMPT, PROMPT])
    latents = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        batch = neti.predict_noise(latents, torch.tensor([50, 950]), encoding)
        for row, t in enumerate((50, 950)):
            single = neti.encode_text([PROMPT])
            alone = neti.predict_noise(latents[row : row + 1], torch.tensor([t]), single)
            assert torch.allclose(batch[row : row + 1], alone, atol=1e-5)


def test_settings_neti_cannot_take_are_refused() -> None:
    with pytest.raises(ValueError, match="one concept per mapper"):
        NeTI(concepts=[ConceptSpec("<v1>", "toy"), ConceptSpec("<v2>", "cat")])
    with pytest.raises(ValueError, match="train_tokens: false"):
        NeTI(concepts=[ConceptSpec("<v1>", "toy")], train_tokens=True)


# ----- export -------------------------------------------------------------------------------
def test_export_loads_in_diffusers_and_samples_what_the_module_samples(
    neti: NeTI, tmp_path: Path, tiny_sd_path: Path
) -> None:
    assert neti.export(tmp_path) == [tmp_path / NETI_MAPPER]
    pipe = fresh_pipe(tiny_sd_path)
    assert load_neti(pipe, tmp_path) == "<v1>"
    kwargs = neti_call_kwargs(pipe, [PROMPT], num_inference_steps=STEPS)
    expected = module_sample(neti)
    assert torch.allclose(pipe_sample(pipe, None, **kwargs), expected, atol=1e-4)
    # Without the per-step callback every step reads the first step's states: other images.
    kwargs.pop("callback_on_step_end")
    kwargs.pop("callback_on_step_end_tensor_inputs")
    assert not torch.allclose(pipe_sample(pipe, None, **kwargs), expected, atol=1e-3)


# ----- training -----------------------------------------------------------------------------
def _build() -> tuple[NeTI, object]:
    datamodule = tiny_datamodule()
    return NeTI(concepts=datamodule.concepts, optimizer=optimizer_with_lr(1e-2)), datamodule


def test_only_the_mapper_changes(tmp_path: Path) -> None:
    module, datamodule = _build()
    assert module.trainable_state_keys() == {
        f"neti_mapper.{name}" for name, _ in module.neti_mapper.named_parameters()
    }
    assert_only_trainable_changed(module, datamodule, tmp_path, steps=3)


def test_resume_is_exact(tmp_path: Path) -> None:
    assert_resume_is_exact(_build, tmp_path)


def test_nested_dropout_follows_the_sample_not_the_batch() -> None:
    """The same sample draws the same truncations whatever else is in its batch (so two
    processes draw what one does), a coin flip per layer: some layers keep all features."""
    module = NeTI(concepts=[ConceptSpec("<v1>", "toy")]).train()
    hidden = module.neti_mapper.hidden_dim
    module._sample_keys, module._dropout_calls = [5, 9], 0
    both = module.dropout_keep(torch.tensor([0, 1])).view(LAYERS, 2)
    module._sample_keys, module._dropout_calls = [9], 0
    alone = module.dropout_keep(torch.tensor([0])).view(LAYERS, 1)
    assert torch.equal(both[:, 1], alone[:, 0])
    assert not torch.equal(both[:, 0], both[:, 1])
    many = []
    for key in range(50):
        module._sample_keys, module._dropout_calls = [key], 0
        many.append(module.dropout_keep(torch.tensor([0])))
    kept_all = float((torch.cat(many) == hidden).float().mean())
    assert 0.3 < kept_all < 0.7  # probability 0.5 per layer call
    module.eval()
    assert module.dropout_keep(torch.tensor([0])) is None
