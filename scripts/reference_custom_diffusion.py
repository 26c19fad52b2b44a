"""A plain Custom Diffusion training loop in the structure of diffusers' example scripts.

    python scripts/reference_custom_diffusion.py --pretrained_model_name_or_path <folder> \
        --instance_data_dir <photos> --class_word dog [--max_train_steps 20] [--clock out.json]

The yardstick of ``scripts/benchmark_startup.py``: what a run costs with only the stack the
example scripts use (argparse, accelerate, diffusers, transformers, PIL; no Lightning, no
config system, no callbacks). It loads each component with ``from_pretrained``, adds the token,
puts diffusers' Custom Diffusion processors on the cross-attention layers, and trains K/V and the
token with AdamW on the photos (resize, centre crop, random flip), as the project's
``CustomDiffusion`` does, and logs the loss to TensorBoard (the scripts' default
``report_to``). ``--clock`` writes the wall time (``time.time()``) of every step's end.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from diffusers.models.attention_processor import CustomDiffusionAttnProcessor2_0
from PIL import Image
from transformers import CLIPTextModel, CLIPTokenizer

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pretrained_model_name_or_path", required=True)
    parser.add_argument("--instance_data_dir", required=True)
    parser.add_argument("--class_word", required=True)
    parser.add_argument("--modifier_token", default="<v1>")
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--train_batch_size", type=int, default=2)
    parser.add_argument("--max_train_steps", type=int, default=20)
    parser.add_argument("--learning_rate", type=float, default=1e-5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output_dir", default="reference-output")
    parser.add_argument("--clock", default=None, help="write each step's end time here (JSON)")
    return parser.parse_args()


def load_photos(folder: str, resolution: int) -> list[torch.Tensor]:
    """Every photo resized (short side), centre-cropped and scaled to [-1, 1], CHW."""
    tensors = []
    for file in sorted(Path(folder).iterdir()):
        if file.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        image = Image.open(file).convert("RGB")
        scale = resolution / min(image.size)
        image = image.resize((round(image.width * scale), round(image.height * scale)))
        left, top = (image.width - resolution) // 2, (image.height - resolution) // 2
        image = image.crop((left, top, left + resolution, top + resolution))
        array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
        tensors.append(torch.from_numpy(array).permute(2, 0, 1))
    return tensors


def custom_diffusion_processors(unet: UNet2DConditionModel) -> dict[str, torch.nn.Module]:
    """Trainable K/V on cross-attention, weightless processors on self-attention."""
    processors: dict[str, torch.nn.Module] = {}
    for name in unet.attn_processors:
        attention = unet.get_submodule(name.removesuffix(".processor"))
        cross = name.endswith("attn2.processor")
        processor = CustomDiffusionAttnProcessor2_0(
            train_kv=cross,
            train_q_out=False,
            hidden_size=attention.to_q.out_features,
            cross_attention_dim=attention.to_k.in_features if cross else None,
        )
        if cross:
            processor.load_state_dict(
                {
                    "to_k_custom_diffusion.weight": attention.to_k.weight.detach().clone(),
                    "to_v_custom_diffusion.weight": attention.to_v.weight.detach().clone(),
                }
            )
        processors[name] = processor
    return processors


def main() -> None:
    args = parse_args()
    accelerator = Accelerator(log_with="tensorboard", project_dir=args.output_dir)
    accelerator.init_trackers("custom-diffusion")  # the example scripts' default report_to
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    model = args.pretrained_model_name_or_path
    tokenizer = CLIPTokenizer.from_pretrained(model, subfolder="tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(model, subfolder="text_encoder")
    vae = AutoencoderKL.from_pretrained(model, subfolder="vae")
    unet = UNet2DConditionModel.from_pretrained(model, subfolder="unet")
    noise_scheduler = DDPMScheduler.from_pretrained(model, subfolder="scheduler")

    # The token starts from the class word's embedding; only its row is trained.
    tokenizer.add_tokens([args.modifier_token])
    token_id = tokenizer.convert_tokens_to_ids(args.modifier_token)
    text_encoder.resize_token_embeddings(len(tokenizer))
    embeddings = text_encoder.get_input_embeddings().weight
    class_id = tokenizer.encode(args.class_word, add_special_tokens=False)[0]
    with torch.no_grad():
        embeddings[token_id] = embeddings[class_id]
    original_embeddings = embeddings.detach().clone()

    for part in (vae, unet, text_encoder):
        part.requires_grad_(False)
    embeddings.requires_grad_(True)
    unet.set_attn_processor(custom_diffusion_processors(unet))
    processor_params = [p for proc in unet.attn_processors.values() for p in proc.parameters()]
    optimizer = torch.optim.AdamW(
        [embeddings, *processor_params], lr=args.learning_rate, weight_decay=1e-2
    )
    photos = load_photos(args.instance_data_dir, args.resolution)
    prompt = f"photo of a {args.modifier_token} {args.class_word}"
    input_ids = tokenizer(
        prompt, padding="max_length", max_length=tokenizer.model_max_length,
        truncation=True, return_tensors="pt",
    ).input_ids  # fmt: skip
    unet, text_encoder, optimizer = accelerator.prepare(unet, text_encoder, optimizer)

    step_ends: list[float] = []
    unet.train()
    for step in range(args.max_train_steps):
        chosen = [random.choice(photos) for _ in range(args.train_batch_size)]
        pixels = torch.stack([p.flip(-1) if random.random() < 0.5 else p for p in chosen])
        latents = vae.encode(pixels).latent_dist.sample() * vae.config.scaling_factor
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (len(pixels),))
        noisy = noise_scheduler.add_noise(latents, noise, timesteps)
        hidden = text_encoder(input_ids.repeat(len(pixels), 1))[0]
        prediction = unet(noisy, timesteps, hidden).sample
        loss = F.mse_loss(prediction.float(), noise.float())
        accelerator.backward(loss)
        # Only the new token's row learns: the example scripts zero the others' gradients.
        grad = text_encoder.get_input_embeddings().weight.grad
        keep = torch.arange(len(tokenizer)) == token_id
        grad[~keep] = 0
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            current = text_encoder.get_input_embeddings().weight
            current[~keep] = original_embeddings[~keep]
        accelerator.log({"loss": loss.detach().item()}, step=step)
        step_ends.append(time.time())
    accelerator.end_training()
    if args.clock:
        Path(args.clock).write_text(json.dumps({"step_ends": step_ends}))


if __name__ == "__main__":
    main()
