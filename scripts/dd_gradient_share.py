"""DDLoss's gradient share: how much of a training step's gradient ACCORD's DD term carries.

    .venv/bin/python scripts/dd_gradient_share.py [--sizes 32 512] [--timesteps 100 500 900]

For each image size (32 px: the tiny pipeline ``tiny-sd``; 512 px: ``sd15-random``, SD 1.5's
published shapes with random weights, 64x64x4 latents) and each of DDLoss's reductions, it
prints, over several (timestep, seed) passes, the ratio

    || d(weight * L_dd) / d theta ||  /  || d L_denoise / d theta ||

over the trained parameters theta of Custom Diffusion (cross-attention K/V and <v1>'s vector),
ACCORD's main baseline; ``weight`` and DDLoss's other options are read from
``configs/accord/custom_diffusion.yaml``. Each pass is one step as training runs it (the
module's own ``denoise`` and ``denoising_loss``, the DDLoss module's own predictions), with its
timesteps pinned, the seed choosing the batch (the DataModule's synthetic photos) and the
draws, and the captions set to ACCORD-style ones ("a {} lying on a wooden bench"), so
the full caption is its own UNet pass as in a captioned run. Both reductions share a pass's UNet
calls (``DenoisingDecoupleLoss.from_predictions``); the gradients are taken separately.

``sd15-random``'s weights are random: its figures show what SD 1.5's latent size does to the
scale, not a trained SD 1.5's share. The 512 px passes are SD 1.5 UNet forwards and backwards
on the CPU (one and a half to three minutes a pass on two cores): keep ``--passes-512`` small.
Not a test: the figures are measured and printed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datamodules.extras.captions import split_caption  # noqa: E402
from datamodules.personalization import PersonalizationDataModule  # noqa: E402
from losses.dd_loss import DenoisingDecoupleLoss  # noqa: E402
from models import CustomDiffusion  # noqa: E402
from step.draws import SampleDraws  # noqa: E402

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "accord" / "custom_diffusion.yaml"
MODELS = {32: "tiny-sd", 512: "sd15-random"}
REDUCTIONS = ("sum", "mean")
# ACCORD-style captions ("{}" is the concept phrase): cg names what the target appears with.
CAPTIONS = [
    "a {} on the back of a girl walking in a park",
    "a {} lying on a wooden bench",
    "a {} next to a cup of coffee on a table",
    "a {} on a beach at sunset",
]


def shipped_dd_options(config: Path = CONFIG) -> dict[str, Any]:
    """DDLoss's init_args in the shipped config (weight, reduction, time_weight, ...)."""
    settings = yaml.safe_load(config.read_text())
    for entry in settings["model"]["init_args"]["regularizers"]:
        if entry["class_path"].endswith("DenoisingDecoupleLoss"):
            return dict(entry.get("init_args") or {})
    raise SystemExit(f"error: {config} has no DenoisingDecoupleLoss regularizer.")


class PinnedDraws(SampleDraws):
    """A sample's draws (latent sample, noise) from its seed, with the timesteps given."""

    def __init__(self, seed: int, size: int, timestep: int) -> None:
        super().__init__(seed, list(range(size)), salt=0, device="cpu")
        self.timestep = timestep

    def randint(self, high: int) -> torch.Tensor:
        return torch.full((len(self),), self.timestep, dtype=torch.long)


class Setup:
    """Custom Diffusion on one model with a DataModule at its size, as ``fit`` prepares them."""

    def __init__(self, size: int, batch_size: int, dd_options: dict[str, Any]) -> None:
        options = {k: v for k, v in dd_options.items() if k not in ("weight", "reduction")}
        self.losses = {r: DenoisingDecoupleLoss(reduction=r, **options) for r in REDUCTIONS}
        self.module = CustomDiffusion(
            pretrained_model_name_or_path=MODELS[size],
            concepts=PersonalizationDataModule(resolution=8).concepts,
            regularizers=[self.losses["sum"]],  # requests DDLoss's caption keys
        )
        data = PersonalizationDataModule(
            resolution=size, batch_size=batch_size, repeats=100, flip_probability=0.0, seed=0
        )
        for loss in self.losses.values():
            loss.prepare(self.module)
        self.module.attach_datamodule(data)
        for loss in self.losses.values():
            loss.prefill(self.module, data)
        self.module.train()
        self.loader = iter(data.train_dataloader())
        self.batches: list[dict[str, Any]] = []
        groups = self.module.trainable_groups()
        self.parameters = list({id(p): p for g in groups.values() for p in g}.values())

    def gradient_norm(self, loss: torch.Tensor) -> float:
        grads = torch.autograd.grad(loss, self.parameters, retain_graph=True, allow_unused=True)
        squares = [g.double().pow(2).sum() for g in grads if g is not None]
        return float(torch.stack(squares).sum().sqrt()) if squares else 0.0

    def batch(self, seed: int) -> dict[str, Any]:
        """The DataModule's batch number ``seed`` (another photo and crop for each seed)."""
        while len(self.batches) <= seed:
            self.batches.append(with_captions(next(self.loader), self.module))
        return self.batches[seed]

    def measure(self, timestep: int, seed: int, weight: float) -> dict[str, float]:
        """One pass: the denoising gradient's norm, and weight * L_dd's over it per reduction."""
        batch = self.batch(seed)
        record = self.module.denoise(batch, PinnedDraws(seed, len(batch["prompts"]), timestep))
        denoise = self.gradient_norm(self.module.denoising_loss(record))
        predictions = self.losses["sum"].predictions(record, self.module)
        shares = {"denoise_norm": denoise}
        for reduction, dd in self.losses.items():
            value = dd.from_predictions(predictions, record, self.module)
            shares[reduction] = self.gradient_norm(weight * value) / denoise
        return shares


def with_captions(batch: dict[str, Any], module: CustomDiffusion) -> dict[str, Any]:
    """The batch with ACCORD-style captions in place of the template fallback."""
    concept = module.concepts[0]
    size = len(batch["prompts"])
    parts = [split_caption(CAPTIONS[i % len(CAPTIONS)], concept) for i in range(size)]
    return {
        **batch,
        "caption_full": [p.full for p in parts],
        "caption_concept": [p.concept for p in parts],
        "caption_general": [p.general for p in parts],
    }


def passes_for(size: int, args: argparse.Namespace) -> list[tuple[int, int]]:
    """(timestep, seed) pairs: every timestep x seed at 32 px; at 512 px ``--passes-512`` of
    them, timesteps spread over the list, one seed each."""
    if size != 512:
        return [(t, s) for t in args.timesteps for s in range(args.seeds)]
    count = min(args.passes_512, len(args.timesteps))
    if count <= 1:
        return [(args.timesteps[len(args.timesteps) // 2], 0)][:count]
    step = (len(args.timesteps) - 1) / (count - 1)
    return [(args.timesteps[round(i * step)], i) for i in range(count)]


def describe(values: list[float]) -> str:
    return (
        f"median {statistics.median(values):.3g}  range {min(values):.3g} .. {max(values):.3g}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", choices=sorted(MODELS), default=[32])
    parser.add_argument("--timesteps", type=int, nargs="+", default=[100, 300, 500, 700, 900])
    parser.add_argument("--seeds", type=int, default=3, help="seeds per timestep at 32 px")
    parser.add_argument("--passes-512", type=int, default=3, help="passes at 512 px")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    # The synthetic photos have no captions.txt; the batches get ACCORD-style ones instead.
    warnings.filterwarnings("ignore", message="No captions.txt")
    if args.threads:
        torch.set_num_threads(args.threads)
    if any(t <= 0 or t >= 1000 for t in args.timesteps):
        parser.error("timesteps are scheduler indices 1..999 (DDLoss's weight is 0 at 0)")
    options = shipped_dd_options()
    weight = float(options.get("weight", DenoisingDecoupleLoss().weight))
    print(
        f"DDLoss from {CONFIG.relative_to(CONFIG.parents[2])}: weight {weight}, options "
        f"{ {k: v for k, v in options.items() if k != 'weight'} }; Custom Diffusion, batch "
        f"{args.batch_size}, {torch.get_num_threads()} threads"
    )
    summary = []
    for size in args.sizes:
        start = time.perf_counter()
        setup = Setup(size, args.batch_size, options)
        side = size // setup.module.vae_scale_factor
        latents = (setup.module.unet.config.in_channels, side, side)
        print(f"\n{size} px ({MODELS[size]}, latents {latents}), built in "
              f"{time.perf_counter() - start:.0f} s")  # fmt: skip
        print(f"{'t':>5}{'seed':>6}{'|g_denoise|':>13}" + "".join(f"{r:>11}" for r in REDUCTIONS)
              + f"{'sum/mean':>11}{'s':>6}")  # fmt: skip
        shares: dict[str, list[float]] = {r: [] for r in REDUCTIONS}
        for timestep, seed in passes_for(size, args):
            start = time.perf_counter()
            result = setup.measure(timestep, seed, weight)
            for reduction in REDUCTIONS:
                shares[reduction].append(result[reduction])
            ratio = result["sum"] / result["mean"] if result["mean"] else float("nan")
            print(f"{timestep:>5}{seed:>6}{result['denoise_norm']:>13.4g}"
                  + "".join(f"{result[r]:>11.3g}" for r in REDUCTIONS)
                  + f"{ratio:>11.0f}{time.perf_counter() - start:>6.0f}", flush=True)  # fmt: skip
        for reduction in REDUCTIONS:
            summary.append(f"{size:>4} px  {reduction:<5} {describe(shares[reduction])}")
        del setup
    print(f"\nDD gradient share, |grad(weight * L_dd)| / |grad(L_denoise)| at weight {weight}:")
    print("\n".join(summary))


if __name__ == "__main__":
    main()
