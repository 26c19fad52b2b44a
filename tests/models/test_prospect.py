"""ProSpect: each stage's token conditions exactly its stage's timesteps, the export generates
the module's images in diffusers, training touches only the stage vectors, resume is exact."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from baseline_checks import assert_only_trainable_changed, assert_resume_is_exact
from export_sampling import PROMPT, STEPS, fresh_pipe, module_sample, pipe_sample
from helpers import optimizer_with_lr, tiny_datamodule
from safetensors import safe_open

from core.concept import ConceptSpec
from models import ProSpect
from models.prospect import (
    PROSPECT_EMBEDS,
    load_prospect,
    prospect_call_kwargs,
    prospect_stage_states,
    stage_of,
)

STAGES = 10


@pytest.fixture(scope="module")
def prospect() -> ProSpect:
    module = ProSpect(concepts=[ConceptSpec("<v1>", "toy")], num_stages=STAGES)
    vectors = module.concept_tokens.embedding.vectors
    with torch.no_grad():  # distinct random vectors per stage, so every stage's text differs
        vectors.copy_(torch.randn(vectors.shape, generator=torch.Generator().manual_seed(0)))
    return module


def _unet_output(module: ProSpect, states: torch.Tensor, timestep: int) -> torch.Tensor:
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return module.unet(latents, torch.tensor([timestep]), encoder_hidden_states=states).sample


def test_the_stage_of_a_timestep_is_its_hundred_for_ten_stages() -> None:
    t = torch.arange(1000)
    assert torch.equal(stage_of(t, 10, 1000), t // 100)  # the paper's 10 x 100 steps
    assert stage_of(torch.tensor([0.0, 999.9, 1000.0]), 3, 1000).tolist() == [0, 2, 2]
    # 3 stages over 1000 steps: [0, 333], [334, 666], [667, 999]
    assert stage_of(torch.tensor([333, 334, 666, 667]), 3, 1000).tolist() == [0, 1, 1, 2]


def test_packed_states_hold_one_prompt_encoding_per_stage(prospect: ProSpect) -> None:
    encoding = prospect.encode_text([PROMPT, "a toy"])
    assert encoding.conditioning.shape == (2, STAGES * 77, 32)
    packed = encoding.conditioning.view(2, STAGES, 77, 32)
    assert torch.equal(packed[:, prospect.text_layer], encoding.hidden_states)
    assert all(not torch.equal(packed[0, 0], packed[0, k]) for k in range(1, STAGES))
    assert all(torch.equal(packed[1, 0], packed[1, k]) for k in range(1, STAGES))  # no token
    assert prospect.stage_ranges()[3] == (300, 399)


@pytest.mark.parametrize("timestep", [0, 250, 999])
def test_the_unet_reads_the_stage_of_its_timestep(prospect: ProSpect, timestep: int) -> None:
    """The packed call equals a call on that stage's states alone, computed by a second
    module whose every stage holds this stage's vector."""
    stage = timestep // 100
    packed = prospect.encode_text([PROMPT]).conditioning
    single = ProSpect(concepts=[ConceptSpec("<v1>", "toy")], num_stages=STAGES)
    with torch.no_grad():
        own = prospect.layer_vectors(0)[stage]
        single.concept_tokens.embedding.vectors.copy_(own.repeat(STAGES, 1))
        expected_states = single.encode_text([PROMPT]).hidden_states
    expected = _unet_output(prospect, expected_states, timestep)
    assert torch.allclose(_unet_output(prospect, packed, timestep), expected, atol=1e-6)


def test_each_sample_of_a_batch_reads_its_own_stage(prospect: ProSpect) -> None:
    packed = prospect.encode_text([PROMPT, PROMPT]).conditioning
    latents = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        batch = prospect.predict_noise(latents, torch.tensor([50, 950]), packed)
        for row, t in enumerate((50, 950)):
            alone = prospect.predict_noise(latents[row : row + 1], torch.tensor([t]), packed[:1])
            assert torch.allclose(batch[row : row + 1], alone, atol=1e-5)
    assert not torch.allclose(batch[0], batch[1], atol=1e-3)


def test_changing_one_stages_vector_changes_only_that_stage(prospect: ProSpect) -> None:
    vectors = prospect.concept_tokens.embedding.vectors
    saved = vectors.detach().clone()
    timesteps = [50, 350, 750]
    before = [_unet_output(prospect, prospect.encode_text([PROMPT]).conditioning, t)
              for t in timesteps]  # fmt: skip
    try:
        with torch.no_grad():
            vectors[3] += torch.randn(32, generator=torch.Generator().manual_seed(5))
            after = [_unet_output(prospect, prospect.encode_text([PROMPT]).conditioning, t)
                     for t in timesteps]  # fmt: skip
    finally:
        with torch.no_grad():
            vectors.copy_(saved)
    same = [torch.allclose(a, b, atol=1e-6) for a, b in zip(after, before)]
    assert same == [True, False, True]


def test_more_stages_than_timesteps_is_refused() -> None:
    with pytest.raises(ValueError, match="each stage needs at least one"):
        ProSpect(concepts=[ConceptSpec("<v1>", "toy")], num_stages=1001)


# ----- export -------------------------------------------------------------------------------
def test_export_loads_in_diffusers_and_samples_what_the_module_samples(
    prospect: ProSpect, tmp_path: Path, tiny_sd_path: Path
) -> None:
    assert prospect.export(tmp_path) == [tmp_path / PROSPECT_EMBEDS]
    with safe_open(str(tmp_path / PROSPECT_EMBEDS), framework="pt") as handle:
        assert list(handle.keys()) == ["<v1>"]
        assert handle.get_tensor("<v1>").shape == (STAGES, 1, 32)
        assert handle.metadata()["prospect_stages"] == str(STAGES)
    pipe = fresh_pipe(tiny_sd_path)
    assert load_prospect(pipe, tmp_path) == ["<v1>"]
    kwargs = prospect_call_kwargs(pipe, [PROMPT], num_inference_steps=STEPS)
    stages = {int(t) // 100 for t in pipe.scheduler.timesteps}
    assert len(stages) == STEPS  # the steps cross stages, so the callback has work to do
    expected = module_sample(prospect)
    assert torch.allclose(pipe_sample(pipe, None, **kwargs), expected, atol=1e-4)
    # Without the per-step callback every step reads the first step's stage: other images.
    kwargs.pop("callback_on_step_end")
    kwargs.pop("callback_on_step_end_tensor_inputs")
    assert not torch.allclose(pipe_sample(pipe, None, **kwargs), expected, atol=1e-3)


def test_loaded_stage_states_are_the_modules(
    prospect: ProSpect, tmp_path: Path, tiny_sd_path: Path
) -> None:
    prospect.export(tmp_path)
    pipe = fresh_pipe(tiny_sd_path)
    load_prospect(pipe, tmp_path)
    states = prospect_stage_states(pipe, [PROMPT])  # (S, 1, L, D)
    packed = prospect.encode_text([PROMPT]).conditioning.view(1, STAGES, 77, 32)
    assert torch.allclose(states[:, 0], packed[0], atol=1e-6)


def test_an_export_for_another_schedule_is_refused_before_loading(
    prospect: ProSpect, tmp_path: Path, tiny_sd_path: Path
) -> None:
    prospect.export(tmp_path)
    pipe = fresh_pipe(tiny_sd_path)
    pipe.scheduler.register_to_config(num_train_timesteps=500)
    size = len(pipe.tokenizer)
    with pytest.raises(ValueError, match="500"):
        load_prospect(pipe, tmp_path)
    assert len(pipe.tokenizer) == size


# ----- training -----------------------------------------------------------------------------
def _build() -> tuple[ProSpect, object]:
    datamodule = tiny_datamodule()
    module = ProSpect(
        concepts=datamodule.concepts, num_stages=STAGES, optimizer=optimizer_with_lr(1e-2)
    )
    return module, datamodule


def test_only_the_stage_vectors_change(tmp_path: Path) -> None:
    module, datamodule = _build()
    assert module.trainable_state_keys() == {"text_encoder.embeddings.token_embedding.vectors"}
    before = assert_only_trainable_changed(module, datamodule, tmp_path, steps=3)
    moved = (module.concept_tokens.embedding.vectors.detach() - before[
        "text_encoder.embeddings.token_embedding.vectors"]).abs().sum(-1)  # fmt: skip
    assert int((moved > 0).sum()) >= 2  # the steps' timesteps reached several stages


def test_resume_is_exact(tmp_path: Path) -> None:
    assert_resume_is_exact(_build, tmp_path)


def test_a_run_starts_from_an_export_with_the_same_stages(
    prospect: ProSpect, tmp_path: Path
) -> None:
    prospect.export(tmp_path)
    started = ProSpect(
        concepts=[ConceptSpec("<v1>", "toy")], num_stages=STAGES, init_embeddings=str(tmp_path)
    )
    vectors = started.concept_tokens.embedding.vectors
    assert torch.equal(vectors, prospect.concept_tokens.embedding.vectors)
    with pytest.raises(ValueError, match="Set num_stages: 10"):
        ProSpect(concepts=[ConceptSpec("<v1>", "toy")], num_stages=5, init_embeddings=str(tmp_path))
