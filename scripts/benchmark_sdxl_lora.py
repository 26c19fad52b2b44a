"""The SDXL LoRA step: this project's LoRA module under Lightning over a plain loop written in
the structure of diffusers' ``train_dreambooth_lora_sdxl.py``, on the same tiny SDXL.

    .venv/bin/python scripts/benchmark_sdxl_lora.py [--steps 30] [--model tiny-sdxl]

The plain loop uses only diffusers, transformers and peft, as the script does: the components
from ``from_pretrained``, ``unet.add_adapter(LoraConfig(r=4, ...))`` on to_q/k/v/out.0, and per
step the VAE latent sample times the scale, uniform timesteps, ``add_noise``, both encoders'
penultimate states concatenated and the second's pooled output, the six size ids, one UNet call
with ``added_cond_kwargs``, the MSE to the noise, backward and AdamW. The project's side is
``models.LoRA`` on the same model and batch size through ``Trainer.fit`` (its DataModule,
size-conditioning extra, step record and logging included). Both run alone, one after the
other, in this process; the ratio is of the median step times. Not a test: measured, not
asserted.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmark_steps

from benchmark_steps import WARMUP, report_against_plain  # noqa: E402

from pretrained.resolve import resolve_pretrained  # noqa: E402

BATCH, RESOLUTION, PROMPT = 2, 32, "a photo of sks toy"


def plain_sdxl_lora_step_seconds(model: str, steps: int) -> float:
    """Median seconds of one step of the diffusers-script-shaped loop."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from peft import LoraConfig
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    path = resolve_pretrained(model)
    tokenizers = [
        CLIPTokenizer.from_pretrained(path, subfolder=s) for s in ("tokenizer", "tokenizer_2")
    ]
    encoders = [
        CLIPTextModel.from_pretrained(path, subfolder="text_encoder"),
        CLIPTextModelWithProjection.from_pretrained(path, subfolder="text_encoder_2"),
    ]
    vae = AutoencoderKL.from_pretrained(path, subfolder="vae")
    unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet")
    scheduler = DDPMScheduler.from_pretrained(path, subfolder="scheduler")
    for frozen in (vae, unet, *encoders):
        frozen.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                                target_modules=["to_k", "to_q", "to_v", "to_out.0"]))  # fmt: skip
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    pixels = torch.rand(BATCH, 3, RESOLUTION, RESOLUTION) * 2 - 1
    gaps = []
    for step in range(steps + WARMUP):
        start = time.perf_counter()
        with torch.no_grad():
            latents = vae.encode(pixels).latent_dist.sample() * vae.config.scaling_factor
            states, pooled = [], None
            for tokenizer, encoder in zip(tokenizers, encoders):
                ids = tokenizer([PROMPT] * BATCH, padding="max_length", max_length=77,
                                truncation=True, return_tensors="pt").input_ids  # fmt: skip
                output = encoder(ids, output_hidden_states=True)
                pooled = output[0]
                states.append(output.hidden_states[-2])
            prompt_embeds = torch.cat(states, dim=-1)
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (BATCH,))
        noisy = scheduler.add_noise(latents, noise, timesteps)
        time_ids = torch.tensor([[RESOLUTION, RESOLUTION, 0, 0, RESOLUTION, RESOLUTION]] * BATCH)
        added = {"text_embeds": pooled, "time_ids": time_ids.float()}
        prediction = unet(noisy, timesteps, prompt_embeds, added_cond_kwargs=added).sample
        loss = F.mse_loss(prediction.float(), noise.float(), reduction="mean")
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= WARMUP:
            gaps.append(time.perf_counter() - start)
    return statistics.median(gaps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--model", default="tiny-sdxl")
    parser.add_argument("--repeats", type=int, default=3, help="alternating measurements")
    args = parser.parse_args()
    torch.manual_seed(0)
    title = f"LoRA on {args.model}, batch {BATCH}, {RESOLUTION} px"
    report_against_plain(title, args.model, args.steps, args.repeats, plain_sdxl_lora_step_seconds)


if __name__ == "__main__":
    main()
