"""The FLUX family trains and conditions the transformer as diffusers' FLUX code does.

Each check is against diffusers' code, not ours: ``FluxPipeline.encode_prompt`` for the text,
its ``_pack_latents`` / ``_prepare_latent_image_ids`` for the layout, ``training_utils``'
density and weighting, and a loss written in the structure of diffusers'
``train_dreambooth_lora_flux.py`` for the training step.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline
from diffusers.training_utils import (
    compute_density_for_timestep_sampling,
    compute_loss_weighting_for_sd3,
)

from backbones.flow_matching_settings import FlowMatchingSettings
from backbones.flux import pack_latents, t5_ids, unpack_latents
from core.concept import ConceptSpec
from models import LoRA, TextualInversion
from step.draws import SampleDraws

PROMPTS = ["a photo of a dog", "a red cat, on the beach in the snow."]


@pytest.fixture(scope="module")
def module(tiny_flux_path: Path) -> TextualInversion:
    return TextualInversion(
        pretrained_model_name_or_path="tiny-flux", concepts=[ConceptSpec("<v1>", "dog")]
    )


@pytest.fixture(scope="module")
def pipe(tiny_flux_path: Path) -> FluxPipeline:
    return FluxPipeline.from_pretrained(tiny_flux_path)


def test_text_is_diffusers_encode_prompt(module: TextualInversion, pipe: FluxPipeline) -> None:
    ours = module.encode_text(PROMPTS)
    length = pipe.tokenizer_2.model_max_length
    states, pooled, _ = pipe.encode_prompt(
        PROMPTS, PROMPTS, device="cpu", max_sequence_length=length
    )
    # T5 reads the very ids the pipeline's tokenizer gives (the states agree to float noise).
    expected_ids = pipe.tokenizer_2(PROMPTS, padding="max_length", return_tensors="pt")
    assert torch.equal(t5_ids(module.tokenize(PROMPTS), *module_tokenizers(module)),
                       expected_ids.input_ids)  # fmt: skip
    torch.testing.assert_close(ours.hidden_states, states, rtol=0, atol=1e-5)
    torch.testing.assert_close(ours.text_embeds, pooled, rtol=0, atol=1e-6)


def module_tokenizers(module: TextualInversion) -> tuple[object, object]:
    return module.tokenizer, module.tokenizer_2


def test_a_concept_token_reaches_t5_under_its_own_id(module: TextualInversion) -> None:
    ids = module.tokenize(["a photo of a <v1> dog"])
    encoded = module.encode_token_ids(ids)
    t5 = module.tokenizer_2
    t5_row = t5(["a photo of a <v1> dog"], padding="max_length", return_tensors="pt").input_ids
    assert t5.convert_tokens_to_ids("<v1>") in t5_row[0].tolist()
    assert module.encoder_concept_tokens[1].embedding.base_vocab_size == len(t5) - 1
    vectors = module.encoder_concept_tokens[1].embedding.vectors
    grad = torch.autograd.grad(encoded.hidden_states.sum(), vectors)[0]
    assert grad.abs().sum() > 0  # T5's concept vector is what the T5 states read


def test_packing_is_diffusers_and_unpacks_exactly() -> None:
    latents = torch.randn(2, 16, 8, 12)
    packed = pack_latents(latents)
    assert torch.equal(packed, FluxPipeline._pack_latents(latents, 2, 16, 8, 12))
    assert torch.equal(unpack_latents(packed, 8, 12), latents)


@pytest.mark.parametrize("scheme", ["none", "logit_normal", "mode", "cosmap", "sigma_sqrt"])
def test_timesteps_and_weights_are_the_scripts(module: TextualInversion, scheme: str) -> None:
    settings = FlowMatchingSettings(weighting_scheme=scheme, logit_mean=0.3, logit_std=0.8)
    family = module.family.configured(settings)
    scheduler = module.noise_scheduler
    draws = SampleDraws(0, [5, 9, 11], 0, torch.device("cpu"))
    timesteps = family.draw_timesteps(draws, scheduler)
    # diffusers' script: u from the density, the schedule's timestep at index u * N.
    reference = FlowMatchEulerDiscreteScheduler.from_config(scheduler.config)
    expected = []
    for generator in SampleDraws(0, [5, 9, 11], 0, torch.device("cpu")).generators:
        u = compute_density_for_timestep_sampling(
            scheme, 1, logit_mean=0.3, logit_std=0.8, mode_scale=1.29, generator=generator
        )
        expected.append(reference.timesteps[(u * 1000).long()])
    torch.testing.assert_close(timesteps, torch.cat(expected))
    sigmas = reference.sigmas[[int((reference.timesteps == t).nonzero()) for t in timesteps]]
    torch.testing.assert_close(
        family.loss_weights(scheduler, timesteps), compute_loss_weighting_for_sd3(scheme, sigmas)
    )


@pytest.mark.smoke  # on the newest versions setup.cfg allows too
def test_a_training_step_is_the_scripts_loss(module: TextualInversion, pipe: FluxPipeline) -> None:
    """Our denoising loss on a batch equals diffusers' FLUX script's, computed from the same
    latents, noise and timesteps by hand: pack, transformer(timestep / 1000, guidance 3.5),
    unpack, weighting * (pred - (noise - x0))^2."""
    family = module.family.configured(FlowMatchingSettings(weighting_scheme="cosmap"))
    module.family, saved = family, module.family
    try:
        torch.manual_seed(0)
        batch = {"pixel_values": torch.rand(2, 3, 32, 32) * 2 - 1, "prompts": PROMPTS}
        draws = SampleDraws(0, [3, 4], 0, torch.device("cpu"))
        record = module.denoise(batch, draws, with_prior=False)
        ours = module.denoising_loss(record)
    finally:
        module.family = saved
    x0, noise, t = record.latents, record.noise, record.timesteps
    sigmas = (t / 1000).view(-1, 1, 1, 1)
    noisy = (1 - sigmas) * x0 + sigmas * noise
    states, pooled, text_ids = pipe.encode_prompt(
        PROMPTS, PROMPTS, device="cpu", max_sequence_length=pipe.tokenizer_2.model_max_length
    )
    height, width = x0.shape[-2:]
    out = pipe.transformer(
        hidden_states=FluxPipeline._pack_latents(noisy, 2, 16, height, width),
        timestep=t / 1000,
        guidance=torch.full((2,), 3.5),
        pooled_projections=pooled,
        encoder_hidden_states=states,
        txt_ids=text_ids,
        img_ids=FluxPipeline._prepare_latent_image_ids(2, height // 2, width // 2, "cpu", x0.dtype),
        return_dict=False,
    )[0]
    pred = FluxPipeline._unpack_latents(out, height * 8, width * 8, 8)
    weighting = compute_loss_weighting_for_sd3("cosmap", sigmas)
    expected = torch.mean((weighting * (pred - (noise - x0)) ** 2).reshape(2, -1), 1).mean()
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)


def test_lora_trains_only_its_adapters(tiny_flux_path: Path) -> None:
    lora = LoRA(pretrained_model_name_or_path="tiny-flux", concepts=[ConceptSpec("<v1>", "dog")])
    names = [n for n, p in lora.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)
    assert any("transformer_blocks.0.attn.add_k_proj" in n for n in names)
    assert any("single_transformer_blocks.0.attn.to_q" in n for n in names)
    assert any("ff_context.net.2" in n for n in names)


def test_settings_a_model_cannot_take_are_refused(tiny_flux_path: Path) -> None:
    concepts = [ConceptSpec("<v1>", "dog")]
    with pytest.raises(ValueError, match="no guidance input"):
        LoRA(
            pretrained_model_name_or_path="tiny-flux-schnell",
            concepts=concepts,
            flow_matching=FlowMatchingSettings(guidance_scale=3.5),
        )
    with pytest.raises(ValueError, match="trains with DDPM"):
        LoRA(
            pretrained_model_name_or_path="tiny-sd",
            concepts=concepts,
            flow_matching=FlowMatchingSettings(weighting_scheme="logit_normal"),
        )
    with pytest.raises(ValueError, match="weighting_scheme"):
        FlowMatchingSettings(weighting_scheme="snr")
