"""Memory of one SDXL training step at 1024 px, batch 1, counted without a GPU.

    python scripts/estimate_sdxl_memory.py [--resolution 1024] [--plain]

No GPU is needed and no weights are allocated: SDXL's components are built at their published
shapes (pretrained/sdxl_random.py) under PyTorch's ``FakeTensorMode``, whose tensors carry
shapes and dtypes but no data, and each phase of a step runs on them while `LiveBytes` adds up
the storages alive after every operator (freed ones subtracted as they die). The step, as the
low-memory overlay runs it (configs/low_memory.yaml; ``--plain``: fp32, no checkpointing):

- static: frozen weights (bf16: both text encoders, the VAE, the UNet's untrained part);
  trained parameters, gradients and optimizer state in fp32 parameters and grads, 8-bit AdamW
  (2 bytes a parameter; ``--plain``: fp32 AdamW, 8 bytes);
- dynamic, the larger of: the VAE encoding one image (no gradient), and the UNet's forward and
  backward under bf16 autocast with gradient checkpointing, gradient flowing to the text
  conditioning (what every baseline's backward goes through; the trained weights' own
  gradients are in the static part).

What it leaves out, so read it as a lower bound on ``torch.cuda.max_memory_allocated`` plus
a CUDA context: the CUDA context (about 0.5 GB), the caching allocator's rounding and
fragmentation, cuBLAS / cuDNN workspaces. Attention is PyTorch's fused SDPA (no full attention
matrix), as on a GPU with flash / memory-efficient attention. Not a test: CI does not run it.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GIB = 2**30
LORA_RANK = 4
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")  # backbones/base.py's lora_targets


class LiveBytes(TorchDispatchMode):
    """Bytes of tensor storages alive, counted from each operator's outputs until freed.

    Storages that exist before (``known``: weights, inputs) are never counted, also when an
    operator returns a view of them (a weight's transpose shares the weight's storage).
    """

    def __init__(self, known: list[torch.Tensor]) -> None:
        super().__init__()
        self.live = self.peak = 0
        self.seen: WeakIdKeyDictionary = WeakIdKeyDictionary()
        for tensor in known:
            self.seen[tensor.untyped_storage()] = 0

    def _free(self, size: int) -> None:
        self.live -= size

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor):
                storage = tensor.untyped_storage()
                if storage not in self.seen:
                    size = storage.nbytes()
                    self.seen[storage] = size
                    self.live += size
                    weakref.finalize(storage, self._free, size)
        self.peak = max(self.peak, self.live)
        return out


def tensors_of(*modules: nn.Module) -> list[torch.Tensor]:
    return [t for m in modules for t in (*m.parameters(), *m.buffers())]


def dynamic_peak(run: Callable[[], None], known: list[torch.Tensor]) -> int:
    """Peak bytes the phase allocates beyond what exists before it."""
    tracker = LiveBytes(known)
    with tracker:
        run()
    return tracker.peak


def trained_counts(unet: nn.Module, text_encoders: list[nn.Module]) -> dict[str, int]:
    """Trained parameters of each baseline (defaults of its config; tokens: 1 vector each)."""
    lora = 0
    for name, module in unet.named_modules():
        if isinstance(module, nn.Linear) and name.endswith(LORA_TARGETS):
            lora += LORA_RANK * (module.in_features + module.out_features)
    custom = sum(
        module.weight.numel()
        for name, module in unet.named_modules()
        if name.endswith(("attn2.to_k", "attn2.to_v"))
    )
    token = sum(e.config.hidden_size for e in text_encoders)
    return {
        "textual_inversion": token,
        "custom_diffusion": custom + token,
        "lora": lora,
        "dreambooth": sum(p.numel() for p in unet.parameters()),
    }


def estimate(resolution: int, plain: bool) -> list[dict[str, Any]]:
    from transformers import CLIPTokenizer

    from pretrained.sdxl_random import sdxl_builders
    from pretrained.tiny_tokenizer import write_tiny_clip_tokenizer

    dtype = torch.float32 if plain else torch.bfloat16
    with tempfile.TemporaryDirectory() as folder:  # the builders read its special token ids
        write_tiny_clip_tokenizer(Path(folder))
        builders = sdxl_builders(CLIPTokenizer.from_pretrained(folder))
    with FakeTensorMode():
        torch.set_default_dtype(dtype)
        parts = {name: build() for name, build in builders.items()}  # type: ignore[operator]
        torch.set_default_dtype(torch.float32)
        unet, vae = parts["unet"], parts["vae"]
        encoders = [parts["text_encoder"], parts["text_encoder_2"]]
        for part in parts.values():
            part.requires_grad_(False)
        if not plain:
            unet.enable_gradient_checkpointing()
        unet.train()
        frozen = sum(t.nbytes for t in tensors_of(*parts.values()))
        side = resolution // 8
        pixels = torch.randn(1, 3, resolution, resolution, dtype=dtype)
        latents = torch.randn(1, 4, side, side)
        states = torch.randn(1, 77, 2048, requires_grad=True)
        added = {"text_embeds": torch.randn(1, 1280), "time_ids": torch.randn(1, 6)}
        known = [*tensors_of(*parts.values()), pixels, latents, states]

        def encode() -> None:
            with torch.no_grad():
                vae.encode(pixels).latent_dist.sample()

        def step() -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=not plain):
                out = unet(latents, torch.tensor([500]), states, added_cond_kwargs=added)
            out.sample.float().pow(2).mean().backward()

        activations = max(dynamic_peak(encode, known), dynamic_peak(step, known))
        counts = trained_counts(unet, encoders)
    optimizer_bytes = 8 if plain else 2
    rows = []
    for case, count in counts.items():
        # A trained UNet weight is fp32 whatever the frozen dtype, so it leaves the frozen part
        # (Custom Diffusion's K/V, DreamBooth's whole UNet; tokens and LoRA rows are new).
        in_unet = count if case in ("custom_diffusion", "dreambooth") else 0
        frozen_here = frozen - in_unet * torch.tensor([], dtype=dtype).element_size()
        trained = count * (4 + 4 + optimizer_bytes)
        total = frozen_here + trained + activations
        rows.append({"case": case, "trained_params": count, "frozen_gib": frozen_here / GIB,
                     "trained_state_gib": trained / GIB, "activations_gib": activations / GIB,
                     "total_gib": total / GIB})  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=1024)
    parser.add_argument("--plain", action="store_true", help="fp32, no checkpointing, AdamW")
    args = parser.parse_args()
    switches = "plain fp32" if args.plain else "low-memory (bf16, checkpointing, 8-bit AdamW)"
    print(f"SDXL at {args.resolution} px, batch 1, {switches}; GiB, no CUDA context")
    print("| case | trained params | frozen | trained + grads + optimizer | activations | total |")
    print("| --- | --- | --- | --- | --- | --- |")
    for row in estimate(args.resolution, args.plain):
        print(f"| {row['case']} | {row['trained_params']:,} | {row['frozen_gib']:.2f} | "
              f"{row['trained_state_gib']:.2f} | {row['activations_gib']:.2f} | "
              f"{row['total_gib']:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
