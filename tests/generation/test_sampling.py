"""generation/sampling.py: ``generate`` is DDIM over the module's live components.

The references are a DDIM loop written out here (Song et al. 2021, Eq. 12 with eta = 0, and
classifier-free guidance) over the module's own UNet and VAE, and diffusers'
StableDiffusionPipeline loaded from the saved tiny pipeline; neither goes through ``generate``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import DDIMScheduler
from export_sampling import fresh_pipe

from core.concept import ConceptSpec
from models import TextualInversion

PROMPTS = ["a photo of a toy", "a red cup on a table"]
STEPS = 3


@pytest.fixture(scope="module")
def module() -> TextualInversion:
    """An untrained module on tiny-sd; the tests below leave it unchanged."""
    return TextualInversion(concepts=[ConceptSpec("<v1>", "toy")])


def plain_embeddings(module: TextualInversion, prompts: list[str]) -> torch.Tensor:
    """CLIP states of prompts without concept tokens, tokenized as SD pipelines do."""
    tokenizer = module.tokenizer
    ids = tokenizer(
        prompts, padding="max_length", max_length=tokenizer.model_max_length,
        truncation=True, return_tensors="pt",
    ).input_ids  # fmt: skip
    return module.text_encoder(ids).last_hidden_state


def ddim_timesteps(module: TextualInversion, steps: int) -> tuple[list[int], int]:
    """DDIM's "leading" spacing: k * (T // steps) + steps_offset, largest first; and the stride."""
    config = module.noise_scheduler.config
    stride = config.num_train_timesteps // steps
    return [k * stride + config.steps_offset for k in reversed(range(steps))], stride


@torch.no_grad()
def ddim_by_hand(
    module: TextualInversion, prompt: str, negative: str, seed: int, guidance: float, size: int
) -> torch.Tensor:
    """One image: x_T ~ N(0, I) from its own seeded generator, then deterministic DDIM
    x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev) eps with the guided eps (abar = 1 past
    the last step), decoded with the VAE's scaling factor and mapped from [-1, 1] to [0, 1]."""
    alphabar = torch.cumprod(1.0 - module.noise_scheduler.betas.double(), dim=0)
    latent = size // 2  # tiny-sd's VAE halves the side (checked in a test below)
    x = torch.randn((1, 4, latent, latent), generator=torch.Generator().manual_seed(seed))
    states = torch.cat([plain_embeddings(module, [negative]), plain_embeddings(module, [prompt])])
    times, stride = ddim_timesteps(module, STEPS)
    for t in times:
        unconditional, conditional = module.unet(
            torch.cat([x, x]), t, encoder_hidden_states=states
        ).sample.chunk(2)
        eps = unconditional + guidance * (conditional - unconditional)
        now = alphabar[t].float()
        before = alphabar[t - stride].float() if t - stride >= 0 else torch.tensor(1.0)
        x0 = (x - (1 - now).sqrt() * eps) / now.sqrt()
        x = before.sqrt() * x0 + (1 - before).sqrt() * eps
    image = module.vae.decode(x / module.vae.config.scaling_factor).sample
    return (image / 2 + 0.5).clamp(0, 1)


@pytest.mark.parametrize(("guidance", "resolution"), [(4.0, None), (1.0, 48)])
def test_generate_is_ddim_with_guidance_written_out(
    module: TextualInversion, guidance: float, resolution: int | None
) -> None:
    """Two prompts with their own seeds and a negative prompt; the default size is the UNet's
    sample size times the VAE factor (32 px on tiny-sd), an explicit one is honoured."""
    images = module.generate(
        PROMPTS, seeds=[3, 9], num_inference_steps=STEPS, guidance_scale=guidance,
        negative_prompt="blurry", resolution=resolution,
    )  # fmt: skip
    size = resolution or 32
    assert images.shape == (2, 3, size, size) and images.dtype == torch.float32
    assert images.min() >= 0.0 and images.max() <= 1.0
    for i, (prompt, seed) in enumerate(zip(PROMPTS, [3, 9])):
        want = ddim_by_hand(module, prompt, "blurry", seed, guidance, size)[0]
        assert (images[i] - want).abs().max() < 1e-5, i


def test_generate_matches_diffusers_pipeline_from_disk(
    module: TextualInversion, tiny_sd_path: Path
) -> None:
    """The saved tiny pipeline under DDIM, given the same prompts, negative prompt, guidance
    and one generator per image, samples the same images."""
    pipe = fresh_pipe(tiny_sd_path)
    want = pipe(
        PROMPTS, negative_prompt=["blurry"] * 2, num_inference_steps=STEPS, guidance_scale=5.0,
        height=32, width=32, output_type="pt",
        generator=[torch.Generator().manual_seed(s) for s in (11, 12)],
    ).images  # fmt: skip
    images = module.generate(
        PROMPTS, seed=11, num_inference_steps=STEPS, guidance_scale=5.0, negative_prompt="blurry"
    )
    assert (images - want).abs().max() < 1e-5


def test_image_i_uses_seed_plus_i_whatever_else_is_in_the_batch(module: TextualInversion) -> None:
    settings = {"num_inference_steps": STEPS, "guidance_scale": 3.0}
    batch = module.generate(PROMPTS, seed=5, **settings)
    assert torch.equal(batch, module.generate(PROMPTS, seeds=[5, 6], **settings))
    alone = module.generate(PROMPTS[1:], seed=6, **settings)[0]
    assert (batch[1] - alone).abs().max() < 1e-5  # batch composition does not enter image 1
    same_prompt = module.generate([PROMPTS[0]] * 2, seed=5, **settings)
    assert (same_prompt[0] - same_prompt[1]).abs().max() > 1e-2  # seeds 5 and 6 differ


def test_guidance_one_ignores_the_negative_prompt(module: TextualInversion) -> None:
    """At guidance 1 the guided eps is the conditional one; above it the negative prompt
    steers the unconditional branch."""

    def sample(guidance: float, negative: str) -> torch.Tensor:
        return module.generate(
            PROMPTS[:1], seed=2, num_inference_steps=STEPS, guidance_scale=guidance,
            negative_prompt=negative,
        )  # fmt: skip

    assert (sample(1.0, "") - sample(1.0, "blurry, dark")).abs().max() < 1e-6
    assert (sample(6.0, "") - sample(6.0, "blurry, dark")).abs().max() > 1e-2


def test_one_seed_per_prompt_or_a_clear_error(module: TextualInversion) -> None:
    with pytest.raises(ValueError, match="1 seeds for 2 prompts; give one each"):
        module.generate(PROMPTS, seeds=[1], num_inference_steps=STEPS)


def test_vae_scale_factor_is_the_vaes_downsampling(module: TextualInversion) -> None:
    """The factor from the config equals pixels / latent side of a real encode."""
    with torch.no_grad():
        latents = module.vae.encode(torch.zeros(1, 3, 32, 32)).latent_dist.mean
    assert module.vae_scale_factor == 32 // latents.shape[-1] == 2


def test_pipeline_is_ddim_over_the_live_components() -> None:
    """Same objects, not copies: a change to the concept vectors shows in the next sample,
    and DDIM keeps the training schedule's betas."""
    module = TextualInversion(concepts=[ConceptSpec("<v1>", "toy")])
    pipe = module.pipeline()
    assert pipe.unet is module.unet and pipe.vae is module.vae
    assert pipe.text_encoder is module.text_encoder and pipe.tokenizer is module.tokenizer
    assert isinstance(pipe.scheduler, DDIMScheduler)
    assert torch.equal(pipe.scheduler.betas, module.noise_scheduler.betas)

    def sample(prompt: str) -> torch.Tensor:
        return module.generate([prompt], seed=0, num_inference_steps=2, guidance_scale=3.0)

    concept, plain = sample("a <v1> toy"), sample("a toy")
    with torch.no_grad():
        module.concept_tokens.embedding.vectors.mul_(-3.0).add_(1.0)
    assert (sample("a <v1> toy") - concept).abs().max() > 1e-2
    assert torch.equal(sample("a toy"), plain)
