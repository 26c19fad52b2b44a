"""The FLUX LoRA step: this project's LoRA module under Lightning over a plain loop written in
the structure of diffusers' ``train_dreambooth_lora_flux.py``, on the same tiny FLUX.

    .venv/bin/python scripts/benchmark_flux_lora.py [--steps 30] [--model tiny-flux]

The plain loop uses only diffusers, transformers and peft, as the script does: the components
from ``from_pretrained``, ``transformer.add_adapter(LoraConfig(r=4, ...))`` on the script's
default layers, and per step the VAE latent sample shifted and scaled, CLIP's pooled output
and T5's states, the packed latents and their image ids, u from
``compute_density_for_timestep_sampling`` ("none"), the schedule's timesteps, the flow-matching
interpolation, one transformer call with guidance 3.5, the unpacked prediction against
noise - x0 weighted by ``compute_loss_weighting_for_sd3``, backward and AdamW. The project's
side is ``models.LoRA`` on the same model and batch size through ``Trainer.fit``. Both run
alone, alternating, in this process; the ratio is of the median step times. Not a test:
measured, not asserted.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmark_steps

from benchmark_steps import WARMUP, report_against_plain  # noqa: E402

from backbones.flux import FLUX_PARTS  # noqa: E402
from pretrained.resolve import resolve_pretrained  # noqa: E402

BATCH, RESOLUTION, PROMPT = 2, 32, "a photo of sks toy"


def plain_flux_lora_step_seconds(model: str, steps: int) -> float:
    """Median seconds of one step of the diffusers-script-shaped loop."""
    from diffusers import FluxPipeline
    from diffusers.training_utils import (
        compute_density_for_timestep_sampling,
        compute_loss_weighting_for_sd3,
    )
    from peft import LoraConfig

    from backbones.flux import Flux

    path = resolve_pretrained(model)
    parts = {name: cls.from_pretrained(path, subfolder=name) for name, cls in FLUX_PARTS.items()}
    vae, transformer, scheduler = parts["vae"], parts["transformer"], parts["scheduler"]
    for frozen in (vae, transformer, parts["text_encoder"], parts["text_encoder_2"]):
        frozen.requires_grad_(False)
    transformer.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                                       target_modules=list(Flux.lora_targets)))  # fmt: skip
    params = [p for p in transformer.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    pixels = torch.rand(BATCH, 3, RESOLUTION, RESOLUTION) * 2 - 1
    shift, scale = vae.config.shift_factor, vae.config.scaling_factor
    gaps = []
    for step in range(steps + WARMUP):
        start = time.perf_counter()
        with torch.no_grad():
            latents = (vae.encode(pixels).latent_dist.sample() - shift) * scale
            clip = parts["tokenizer"]
            clip_ids = clip([PROMPT] * BATCH, padding="max_length", max_length=77,
                            truncation=True, return_tensors="pt").input_ids  # fmt: skip
            pooled = parts["text_encoder"](clip_ids).pooler_output
            t5 = parts["tokenizer_2"]
            t5_ids = t5([PROMPT] * BATCH, padding="max_length", max_length=t5.model_max_length,
                        truncation=True, return_tensors="pt").input_ids  # fmt: skip
            states = parts["text_encoder_2"](t5_ids)[0]
        _, channels, height, width = latents.shape
        image_ids = FluxPipeline._prepare_latent_image_ids(
            BATCH, height // 2, width // 2, "cpu", latents.dtype
        )
        noise = torch.randn_like(latents)
        u = compute_density_for_timestep_sampling("none", BATCH)
        timesteps = scheduler.timesteps[(u * scheduler.config.num_train_timesteps).long()]
        sigmas = (timesteps / scheduler.config.num_train_timesteps).view(-1, 1, 1, 1)
        noisy = (1.0 - sigmas) * latents + sigmas * noise
        packed = FluxPipeline._pack_latents(noisy, BATCH, channels, height, width)
        prediction = transformer(
            hidden_states=packed, timestep=timesteps / 1000, guidance=torch.full((BATCH,), 3.5),
            pooled_projections=pooled, encoder_hidden_states=states,
            txt_ids=torch.zeros(states.shape[1], 3), img_ids=image_ids, return_dict=False,
        )[0]  # fmt: skip
        prediction = FluxPipeline._unpack_latents(prediction, height * 8, width * 8, 8)
        weighting = compute_loss_weighting_for_sd3("none", sigmas)
        error = weighting.float() * (prediction.float() - (noise - latents).float()) ** 2
        loss = error.reshape(BATCH, -1).mean(1).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= WARMUP:
            gaps.append(time.perf_counter() - start)
    return statistics.median(gaps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--model", default="tiny-flux")
    parser.add_argument("--repeats", type=int, default=3, help="alternating measurements")
    args = parser.parse_args()
    torch.manual_seed(0)
    title = f"LoRA on {args.model}, batch {BATCH}, {RESOLUTION} px"
    report_against_plain(title, args.model, args.steps, args.repeats, plain_flux_lora_step_seconds)


if __name__ == "__main__":
    main()
