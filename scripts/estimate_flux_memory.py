"""Memory of one FLUX.1-dev LoRA step at 1024 px, batch 1, counted without a GPU.

    python scripts/estimate_flux_memory.py [--resolution 1024] [--storage nf4|fp8|bf16]

As scripts/estimate_sdxl_memory.py counts SDXL's: the transformer and VAE are built at
FLUX.1-dev's published shapes (pretrained/flux_random.py) under ``FakeTensorMode`` (shapes, no
data) and `LiveBytes` adds up the storages each phase allocates. The step, as
configs/flux/low_memory.yaml runs it:

- static: the transformer's frozen linear weights at ``--storage``'s bytes per weight (nf4 and
  fp8 measured here on a 3072 x 3072 torchao tensor, scales included; bf16: 2), its other
  weights and the VAE in bf16; LoRA's adapters (rank 4, diffusers' FLUX default layers) in
  fp32 with fp32 gradients and 8-bit AdamW state (2 bytes a parameter);
- dynamic, the larger of: the VAE encoding one image (no gradient), and the transformer's
  forward and backward under bf16 autocast with gradient checkpointing on 4,096 packed image
  tokens and 512 T5 tokens, gradient flowing to the text states; one layer's weight
  dequantized at a time is added (the largest, in bf16).

The text encoders are not counted: with the prompts' T5 and CLIP outputs cached (the frozen
text of a LoRA run), they can leave the device (T5-XXL alone is 9.5 GB in bf16). Read the
total as a lower bound on ``torch.cuda.max_memory_allocated`` plus a CUDA context (about
0.5 GB), allocator rounding and kernel workspaces. Not a test: CI does not run it.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from estimate_sdxl_memory import GIB, dynamic_peak, tensors_of  # noqa: E402

LORA_RANK = 4


def bytes_per_weight(storage: str) -> float:
    """A quantized 3072 x 3072 weight's stored bytes per weight (torchao's tensors)."""
    if storage == "bf16":
        return 2.0
    from training.quantization import quantize_frozen_linears

    layer = nn.Sequential(nn.Linear(3072, 3072, bias=False)).requires_grad_(False)
    quantize_frozen_linears(layer, storage)
    weight = layer[0].weight.data
    parts = [getattr(weight, name) for name in weight.__tensor_flatten__()[0]]
    return sum(p.numel() * p.element_size() for p in parts) / (3072 * 3072)


def estimate(resolution: int, storage: str) -> dict[str, float]:
    from transformers import CLIPTokenizer

    from backbones.flux import Flux, pack_latents
    from pretrained.flux_random import flux_builders
    from pretrained.tiny_tokenizer import write_tiny_clip_tokenizer

    per_weight = bytes_per_weight(storage)
    with tempfile.TemporaryDirectory() as folder:
        write_tiny_clip_tokenizer(Path(folder))
        builders = flux_builders(CLIPTokenizer.from_pretrained(folder))
    with FakeTensorMode():
        torch.set_default_dtype(torch.bfloat16)
        transformer, vae = builders["transformer"](), builders["vae"]()
        torch.set_default_dtype(torch.float32)
        for part in (transformer, vae):
            part.requires_grad_(False)
        transformer.enable_gradient_checkpointing()
        transformer.train()
        linears = [m for m in transformer.modules() if isinstance(m, nn.Linear)]
        linear_weights = sum(m.weight.numel() for m in linears)
        others = sum(t.numel() for t in tensors_of(transformer)) - linear_weights
        frozen = linear_weights * per_weight + others * 2 + sum(t.nbytes for t in tensors_of(vae))
        largest = max(m.weight.numel() for m in linears) * 2  # one dequantized at a time
        lora = sum(
            LORA_RANK * (m.in_features + m.out_features)
            for name, m in transformer.named_modules()
            if isinstance(m, nn.Linear) and name.endswith(Flux.lora_targets)
        )
        side = resolution // 8
        pixels = torch.randn(1, 3, resolution, resolution, dtype=torch.bfloat16)
        latents = torch.randn(1, 16, side, side)
        states = torch.randn(1, 512, 4096, requires_grad=True)
        pooled = torch.randn(1, 768)
        known = [*tensors_of(transformer, vae), pixels, latents, states, pooled]

        def encode() -> None:
            with torch.no_grad():
                vae.encode(pixels).latent_dist.sample()

        def step() -> None:
            ids = torch.zeros(side // 2 * side // 2, 3)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = transformer(
                    hidden_states=pack_latents(latents), timestep=torch.tensor([0.5]),
                    guidance=torch.tensor([3.5]), pooled_projections=pooled,
                    encoder_hidden_states=states, txt_ids=torch.zeros(512, 3), img_ids=ids,
                    return_dict=False,
                )[0]  # fmt: skip
            out.float().pow(2).mean().backward()

        activations = max(dynamic_peak(encode, known), dynamic_peak(step, known)) + largest
    trained = lora * (4 + 4 + 2)
    return {
        "lora_params": lora, "bytes_per_weight": per_weight, "frozen_gib": frozen / GIB,
        "trained_state_gib": trained / GIB, "activations_gib": activations / GIB,
        "total_gib": (frozen + trained + activations) / GIB,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=1024)
    parser.add_argument("--storage", choices=("nf4", "fp8", "bf16"), default="nf4")
    args = parser.parse_args()
    row = estimate(args.resolution, args.storage)
    print(f"FLUX.1-dev LoRA at {args.resolution} px, batch 1, frozen transformer in "
          f"{args.storage} ({row['bytes_per_weight']:.3f} bytes a weight), bf16 autocast, "
          "checkpointing, 8-bit AdamW; text encoders off the device; GiB, no CUDA "
          "context")  # fmt: skip
    print("| LoRA params | frozen | trained + grads + optimizer | activations | total |")
    print("| --- | --- | --- | --- | --- |")
    cells = (f"{row['lora_params']:,}", f"{row['frozen_gib']:.2f}",
             f"{row['trained_state_gib']:.3f}", f"{row['activations_gib']:.2f}",
             f"{row['total_gib']:.2f}")  # fmt: skip
    print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
