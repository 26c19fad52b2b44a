"""Video of a trained concept with AnimateDiff (ClassDiffusion, section 4.3).

    python generate_video.py --run runs/custom_diffusion/custom_diffusion/version_0 \
        --prompt "a {} running on the grass"

loads the run's export (Textual Inversion, Custom Diffusion, LoRA, DreamBooth or CLIF), as its
``export.json`` describes it, into a Stable Diffusion (or SDXL) pipeline with diffusers' own
loaders (``models.load_export``), wraps it with a motion adapter (``--motion-adapter``: a hub
id, a local folder, or ``tiny-motion-adapter`` / ``tiny-motion-adapter-sdxl``) in diffusers'
``AnimateDiffPipeline`` (``AnimateDiffSDXLPipeline``), and writes ``video.mp4``, ``video.gif``,
``frames.png`` and ``settings.json`` into a new ``<run>/eval/video-<n>/`` with the frame grid
in its TensorBoard (``video/frames``). ``{}`` in the prompt is the run's concept ("<v1> dog").
Defaults are the paper's: 512x512, guidance 7.5, 25 DDIM steps, 16 frames (SDXL: 1024 px, the
SDXL beta adapter's size; tiny runs: 32 px, their size).
Without ``--run``: ``--export <folder> --output <folder>`` (the base model is the one the
export's ``export.json`` names unless ``--pretrained`` says otherwise).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from core.quiet import silence_library_noise

silence_library_noise()  # before transformers is imported: it logs its notices then

import torch
import yaml

from backbones import TINY_NAMES
from core.concept import ConceptSpec
from core.errors import run_command
from core.run_config import RUN_CONFIG, next_numbered
from exports.manifest import SD1, ExportManifest, Format, NotLoadableError
from generation.video import (
    VideoSettings,
    animate,
    check_adapter_fits,
    generate_frames,
    write_video,
)
from pretrained.resolve import resolve_pretrained
from pretrained.tiny_motion_adapter import (
    TINY_MOTION_ADAPTER_NAME,
    TINY_SDXL_MOTION_ADAPTER_NAME,
    resolve_motion_adapter,
)
from pretrained.tiny_sd import TINY_RESOLUTION

SD15_MOTION_ADAPTER = "guoyww/animatediff-motion-adapter-v1-5-2"
SDXL = "sdxl"
# Per family: the motion adapter (released, tiny twin), the pipeline class, the default size.
VIDEO_FAMILIES: dict[str, tuple[str, str, str, int]] = {
    SD1: (SD15_MOTION_ADAPTER, TINY_MOTION_ADAPTER_NAME, "StableDiffusionPipeline", 512),
    SDXL: (
        "guoyww/animatediff-motion-adapter-sdxl-beta",
        TINY_SDXL_MOTION_ADAPTER_NAME,
        "StableDiffusionXLPipeline",
        1024,
    ),
}
DEFAULT_PROMPT = "a {} running on the grass"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="a run folder (holds config.yaml, export/)")
    parser.add_argument("--export", type=Path, help="an export folder (default: <run>/export)")
    parser.add_argument("--pretrained", help="the base model (default: the export's)")
    adapter_help = f"default: {SD15_MOTION_ADAPTER} (SDXL: its sdxl-beta), or "
    adapter_help += f"{TINY_MOTION_ADAPTER_NAME}(-sdxl) for a tiny model"
    parser.add_argument("--motion-adapter", help=adapter_help)
    parser.add_argument("--prompt", default=DEFAULT_PROMPT, help="{} = the run's concept")
    parser.add_argument("--concept", help='what {} stands for (default: the run\'s "<v1> dog")')
    parser.add_argument("--negative-prompt", default=None)
    parser.add_argument("--output", type=Path, help="default: a new <run>/eval/video-<n>")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--height", type=int, default=None, help="default 512 (SDXL 1024, tiny 32)")
    parser.add_argument("--width", type=int, default=None, help="default 512 (SDXL 1024, tiny 32)")
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


def video_export(folder: Path) -> ExportManifest:
    """The export's manifest, once it is known to go into a Stable Diffusion pipeline (before
    any weights load): a folder without ``export.json`` or an XTI / VisualEncoder export is
    one clear error."""
    from models.exports_loading import check_loadable

    try:
        manifest = check_loadable(folder)
    except NotLoadableError as error:
        raise ValueError(
            f"{error}. AnimateDiff takes a plain Stable Diffusion pipeline: video works with "
            "Textual Inversion, Custom Diffusion, LoRA, DreamBooth and CLIF exports"
        ) from None
    if manifest.family not in VIDEO_FAMILIES:
        raise ValueError(
            f"{folder} is an export for the {manifest.family} backbone; video here drives "
            f"AnimateDiff's motion adapters for {' and '.join(VIDEO_FAMILIES)}, so give a run "
            "of one of those"
        )
    return manifest


def is_pipeline_folder(manifest: ExportManifest) -> bool:
    """Whether the export is itself a whole pipeline (DreamBooth's): no base model needed."""
    return bool(manifest.files_of(Format.DIFFUSERS_PIPELINE))


def concept_pipeline(base: str, export: Path, manifest: ExportManifest, dtype: torch.dtype) -> Any:
    """An SD (SDXL) pipeline that generates the concept as the trained module does, with plain
    UNet weights (Custom Diffusion's K/V merged, the LoRA fused): what a motion UNet takes."""
    import diffusers

    from models.exports_loading import load_export

    pipeline_class = getattr(diffusers, VIDEO_FAMILIES[manifest.family][2])
    if is_pipeline_folder(manifest):
        return pipeline_class.from_pretrained(export, dtype=dtype)
    # SD 1.x pipelines carry a safety checker slot, which a personalization run has no use for.
    extra = {"safety_checker": None, "requires_safety_checker": False}
    pipe = pipeline_class.from_pretrained(
        resolve_pretrained(base, "--pretrained"), dtype=dtype,
        **(extra if manifest.family == SD1 else {}),
    )  # fmt: skip
    load_export(pipe, export)
    return plain_unet(pipe)


def plain_unet(pipe: Any) -> Any:
    """Merge what a loader put beside the UNet's weights into them: Custom Diffusion's K/V
    processors, LoRA adapters (fused, then unloaded)."""
    from diffusers.models.attention_processor import (
        CustomDiffusionAttnProcessor,
        CustomDiffusionAttnProcessor2_0,
    )

    from models.custom_diffusion import merge_custom_diffusion

    custom = (CustomDiffusionAttnProcessor, CustomDiffusionAttnProcessor2_0)
    if any(isinstance(p, custom) for p in pipe.unet.attn_processors.values()):
        merge_custom_diffusion(pipe.unet)
    if any(pipe.get_list_adapters().values()):
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
    export = args.export or (args.run / "export" if args.run else None)
    if export is None:
        raise ValueError("give --run <run folder>, or --export <folder>")
    manifest = video_export(export)
    base = args.pretrained or manifest.base_model  # what the export was trained on
    if "{}" in args.prompt:
        if not (args.concept or args.run):
            raise ValueError('the prompt has {} but there is no run: pass --concept "<v1> dog"')
        prompt = args.prompt.replace("{}", args.concept or concept_phrase(config))
    else:
        prompt = args.prompt
    tiny = base in TINY_NAMES
    released, tiny_adapter, _, family_size = VIDEO_FAMILIES[manifest.family]
    adapter_name = args.motion_adapter or (tiny_adapter if tiny else released)
    size = TINY_RESOLUTION if tiny else family_size
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
    pipeline_folder = is_pipeline_folder(manifest)
    unet_home = export if pipeline_folder else resolve_pretrained(base, "--pretrained")
    check_adapter_fits(
        dict(UNet2DConditionModel.load_config(unet_home, subfolder="unet")),
        dict(MotionAdapter.load_config(adapter_path)),
        adapter_name,
    )
    dtype = torch.float16 if args.device.startswith("cuda") else torch.float32
    adapter = MotionAdapter.from_pretrained(adapter_path, dtype=dtype)
    video_pipe = animate(concept_pipeline(base, export, manifest, dtype), adapter, adapter_name)
    if args.device != "cpu":
        video_pipe.to(args.device)
    frames = generate_frames(video_pipe, prompt, settings)
    paths = write_video(frames, output, settings.fps)
    record = {
        "prompt": prompt, "export": str(export), "baseline": manifest.baseline,
        "pretrained": base,
        "motion_adapter": adapter_name, **settings.as_dict(),
        "files": {name: path.name for name, path in paths.items()},
    }  # fmt: skip
    (output / "settings.json").write_text(json.dumps(record, indent=2))
    log_to_tensorboard(output, frames, prompt)
    return output


def main(argv: list[str]) -> int:
    """``error: ...`` and exit code 2 for what the user can fix; --debug shows tracebacks."""
    return run_command(lambda args: f"video: {generate(parse_args(args))}", argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
