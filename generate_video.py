"""Video of a trained concept with AnimateDiff (ClassDiffusion, section 4.3).

    python generate_video.py --run runs/custom_diffusion/custom_diffusion/version_0 \
        --prompt "a {} running on the grass"

loads the run's export (Textual Inversion, Custom Diffusion, LoRA or DreamBooth) into a
Stable Diffusion pipeline with diffusers' own loaders, wraps it with a motion adapter
(``--motion-adapter``: a hub id, a local folder, or ``tiny-motion-adapter``) in diffusers'
``AnimateDiffPipeline``, and writes ``video.mp4``, ``video.gif``, ``frames.png`` and
``settings.json`` into a new ``<run>/eval/video-<n>/`` with the frame grid in its TensorBoard
(``video/frames``). ``{}`` in the prompt is the run's concept ("<v1> dog"). Defaults are the
paper's: 512x512, guidance 7.5, 25 DDIM steps, 16 frames (tiny-sd runs: 32 px, its size).
Without ``--run``: ``--export <folder> --pretrained <base> --output <folder>``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any

from core.quiet import silence_library_noise

silence_library_noise()  # before transformers is imported: it logs its notices then

import torch
import yaml

from core.concept import ConceptSpec
from core.errors import user_message
from core.run_config import RUN_CONFIG, next_numbered
from generation.video import (
    VideoSettings,
    animate,
    check_adapter_fits,
    generate_frames,
    write_video,
)
from pretrained.resolve import resolve_pretrained
from pretrained.tiny_motion_adapter import TINY_MOTION_ADAPTER_NAME, resolve_motion_adapter
from pretrained.tiny_sd import TINY_MODEL_NAME, TINY_RESOLUTION

SD15_MOTION_ADAPTER = "guoyww/animatediff-motion-adapter-v1-5-2"
DEFAULT_PROMPT = "a {} running on the grass"
NOT_VIDEO = {
    "xti_embeds.safetensors": "XTI / P+ (its per-layer tokens need its own pipeline)",
    "visual_encoder.safetensors": "VisualEncoder (its vectors come from photos at use time)",
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="a run folder (holds config.yaml, export/)")
    parser.add_argument("--export", type=Path, help="an export folder (default: <run>/export)")
    parser.add_argument("--pretrained", help="the base model (default: the run's)")
    parser.add_argument("--motion-adapter", help=f"default: {SD15_MOTION_ADAPTER}, "
                        f"or {TINY_MOTION_ADAPTER_NAME} for tiny-sd")  # fmt: skip
    parser.add_argument("--prompt", default=DEFAULT_PROMPT, help="{} = the run's concept")
    parser.add_argument("--concept", help='what {} stands for (default: the run\'s "<v1> dog")')
    parser.add_argument("--negative-prompt", default=None)
    parser.add_argument("--output", type=Path, help="default: a new <run>/eval/video-<n>")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--height", type=int, default=None, help="default 512 (tiny-sd: 32)")
    parser.add_argument("--width", type=int, default=None, help="default 512 (tiny-sd: 32)")
    parser.add_argument("--guidance-scale", type=float, default=7.5)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--fps", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return parser.parse_args(argv)


def run_config(run: Path) -> dict[str, Any]:
    path = run / RUN_CONFIG
    if not path.is_file():
        raise FileNotFoundError(
            f"--run {run}: no {RUN_CONFIG} there; pass the run's version folder "
            "(runs/<name>/<logger name>/version_<n>) or --export with --pretrained"
        )
    return yaml.safe_load(path.read_text()) or {}


def concept_phrase(config: dict[str, Any]) -> str:
    """'<v1> dog' from a run's data options (the synthetic toy's 'toy' when there are no photos),
    as the DataModule makes it."""
    from datamodules.personalization import SYNTHETIC_CLASS_WORD

    data = (config.get("data") or {}).get("init_args") or {}
    # A run with photos always has a class word (the DataModule requires one).
    word = data.get("class_word") or SYNTHETIC_CLASS_WORD
    return ConceptSpec(data.get("concept_token") or "<v1>", word).phrase


def export_kind(folder: Path) -> str:
    """Which baseline wrote the export folder, from the files in it."""
    from models.custom_diffusion import CUSTOM_DIFFUSION_WEIGHTS
    from models.lora import LORA_WEIGHTS

    if not folder.is_dir():
        raise FileNotFoundError(f"export folder {folder} does not exist; train first, or pass "
                                "--export <run>/export/step-<N>")  # fmt: skip
    for name, method in NOT_VIDEO.items():
        if (folder / name).exists():
            raise ValueError(
                f"{folder} is a {method} export, which AnimateDiff cannot take; video works "
                "with Textual Inversion, Custom Diffusion, LoRA and DreamBooth exports"
            )
    kinds = {
        "model_index.json": "dreambooth",
        CUSTOM_DIFFUSION_WEIGHTS: "custom_diffusion",
        LORA_WEIGHTS: "lora",
    }
    found = [kind for name, kind in kinds.items() if (folder / name).exists()]
    if found:
        return found[0]
    if list(folder.glob("learned_embeds*.safetensors")):
        return "textual_inversion"
    raise FileNotFoundError(
        f"{folder} holds no export (learned_embeds, Custom Diffusion or LoRA weights, or a "
        "DreamBooth pipeline); pass the run's export/ or export/step-<N> folder"
    )


def concept_pipeline(base: str, export: Path, kind: str, dtype: torch.dtype) -> Any:
    """An SD pipeline that generates the concept as the trained module does, with plain
    UNet weights (Custom Diffusion's K/V merged, the LoRA fused): what a motion UNet takes."""
    from diffusers import StableDiffusionPipeline

    from models.custom_diffusion import load_custom_diffusion, merge_custom_diffusion
    from models.lora import load_lora

    if kind == "dreambooth":
        return StableDiffusionPipeline.from_pretrained(export, dtype=dtype)
    pipe = StableDiffusionPipeline.from_pretrained(
        resolve_pretrained(base, "--pretrained"), dtype=dtype,
        safety_checker=None, requires_safety_checker=False,
    )  # fmt: skip
    if kind == "textual_inversion":
        for file in sorted(export.glob("learned_embeds*.safetensors")):
            pipe.load_textual_inversion(file)
    elif kind == "custom_diffusion":
        load_custom_diffusion(pipe, export)
        merge_custom_diffusion(pipe.unet)
    else:
        load_lora(pipe, export)
        pipe.fuse_lora()  # into the weights, then the adapters go: a plain UNet is left
        pipe.unload_lora_weights()
    return pipe


def log_to_tensorboard(folder: Path, frames: list[Any], prompt: str) -> None:
    from torch.utils.tensorboard import SummaryWriter

    from generation.video import frame_grid

    writer = SummaryWriter(log_dir=str(folder))
    writer.add_image("video/frames", frame_grid(frames), 0)
    writer.add_text("video/prompt", prompt, 0)
    writer.close()


def generate(args: argparse.Namespace) -> Path:
    """Everything the command does; returns the output folder."""
    config = run_config(args.run) if args.run else {}
    model_args = (config.get("model") or {}).get("init_args") or {}
    base = args.pretrained or model_args.get("pretrained_model_name_or_path")
    export = args.export or (args.run / "export" if args.run else None)
    if export is None:
        raise ValueError("give --run <run folder>, or --export <folder> with --pretrained")
    kind = export_kind(export)
    if "{}" in args.prompt:
        if not (args.concept or args.run):
            raise ValueError('the prompt has {} but there is no run: pass --concept "<v1> dog"')
        prompt = args.prompt.replace("{}", args.concept or concept_phrase(config))
    else:
        prompt = args.prompt
    tiny = base == TINY_MODEL_NAME
    adapter_name = args.motion_adapter or (
        TINY_MOTION_ADAPTER_NAME if tiny else SD15_MOTION_ADAPTER
    )
    size = TINY_RESOLUTION if tiny else VideoSettings.height
    settings = VideoSettings(
        height=args.height or size, width=args.width or size, num_frames=args.frames,
        guidance_scale=args.guidance_scale, num_inference_steps=args.steps, fps=args.fps,
        seed=args.seed, negative_prompt=args.negative_prompt,
    )  # fmt: skip
    if args.output is None and args.run is None:
        raise ValueError("without --run, say where the video goes: --output <folder>")
    output = args.output or next_numbered(args.run / "eval", "video")

    from diffusers import MotionAdapter, UNet2DConditionModel

    # Whether the adapter fits, from the two configs alone: before any weights are loaded.
    adapter_path = resolve_motion_adapter(adapter_name)
    if kind != "dreambooth" and base is None:
        raise ValueError("--pretrained is needed: the base model the export was trained on")
    unet_home = export if kind == "dreambooth" else resolve_pretrained(base, "--pretrained")
    check_adapter_fits(
        dict(UNet2DConditionModel.load_config(unet_home, subfolder="unet")),
        dict(MotionAdapter.load_config(adapter_path)),
        adapter_name,
    )
    dtype = torch.float16 if args.device.startswith("cuda") else torch.float32
    adapter = MotionAdapter.from_pretrained(adapter_path, dtype=dtype)
    video_pipe = animate(concept_pipeline(base, export, kind, dtype), adapter, adapter_name)
    if args.device != "cpu":
        video_pipe.to(args.device)
    frames = generate_frames(video_pipe, prompt, settings)
    paths = write_video(frames, output, settings.fps)
    record = {
        "prompt": prompt, "export": str(export), "kind": kind, "pretrained": base,
        "motion_adapter": adapter_name, **settings.as_dict(),
        "files": {name: path.name for name, path in paths.items()},
    }  # fmt: skip
    (output / "settings.json").write_text(json.dumps(record, indent=2))
    log_to_tensorboard(output, frames, prompt)
    return output


def main(argv: list[str]) -> int:
    """``error: ...`` and exit code 2 for what the user can fix; --debug shows tracebacks."""
    debug = "--debug" in argv or os.environ.get("PERSONALIZE_DEBUG", "") not in ("", "0")
    args = parse_args([a for a in argv if a != "--debug"])
    try:
        output = generate(args)
    except Exception as error:
        message = None if debug else user_message(error)
        if message is None:
            traceback.print_exc()
            return 1
        print(f"error: {message}", file=sys.stderr)
        return 2
    print(f"video: {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
