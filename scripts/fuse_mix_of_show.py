"""Mix-of-Show's gradient fusion of several ED-LoRA runs into one model.

    python scripts/fuse_mix_of_show.py runs/a/export runs/b/export --output runs/fused

Each input is an ED-LoRA export folder (``configs/clif/mix_of_show.yaml``, one concept per run,
distinct tokens, the same base model). The output folder gets ``xti_embeds.safetensors`` (every
concept), ``mix_of_show_fused.safetensors`` (the fused layer weights) and ``export.json``;
``models.mix_of_show_fused.fused_pipeline(folder)`` generates with it, and
``configs/clif/mix_of_show_fused.yaml`` scores it with ``train.py test``. The method and its
choices: models/mix_of_show_fusion.py. What the user can fix is one ``error: ...`` line, exit
code 2 (--debug: the traceback).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from core.quiet import silence_library_noise  # noqa: E402

silence_library_noise()  # before transformers is imported: it logs its notices then

import torch  # noqa: E402

from core.errors import run_command  # noqa: E402
from models.mix_of_show_fusion import FusionSettings, fuse_runs  # noqa: E402


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("exports", nargs="+", type=Path, help="ED-LoRA export folders")
    parser.add_argument("--output", type=Path, required=True, help="a new folder")
    defaults = FusionSettings()
    parser.add_argument("--spatial-steps", type=int, default=defaults.spatial_steps,
                        help="sampling steps recorded per concept for the UNet's spatial layers")
    parser.add_argument("--ridge", type=float, default=defaults.ridge,
                        help="pull towards the base weights, relative to the inputs' scale")
    parser.add_argument("--resolution", type=int, default=None,
                        help="side of those samples (default: the base model's)")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return parser.parse_args(argv)  # fmt: skip


def fuse(argv: list[str]) -> str:
    args = parse_args(argv)
    settings = FusionSettings(
        spatial_steps=args.spatial_steps, ridge=args.ridge, seed=args.seed,
        resolution=args.resolution,
    )  # fmt: skip
    manifest = fuse_runs(list(args.exports), args.output, settings, args.device)
    return f"fused export: {manifest.parent}"


def main(argv: list[str]) -> int:
    """``error: ...`` and exit code 2 for what the user can fix; --debug shows tracebacks."""
    return run_command(fuse, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
