"""Video of a learned concept: a Stable Diffusion pipeline with a motion adapter (AnimateDiff).

ClassDiffusion (section 4.3) shows that a personalized model drives AnimateDiff unchanged: the
concept's tokens and weights go into an ordinary SD 1.x (or SDXL) pipeline, and diffusers'
``AnimateDiffPipeline.from_pipe`` (``AnimateDiffSDXLPipeline``) wraps that pipeline's UNet into
a motion UNet with the adapter's temporal layers. Whatever made the SD pipeline (a textual
inversion, merged Custom Diffusion K/V, a fused LoRA, a DreamBooth folder) is not this
module's business.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import (
    AnimateDiffPipeline,
    AnimateDiffSDXLPipeline,
    DDIMScheduler,
    MotionAdapter,
    StableDiffusionPipeline,
)
from PIL import Image

from core.images import make_grid

# The paper's setting (ClassDiffusion 4.3 follows AnimateDiff's defaults).
PAPER_RESOLUTION, PAPER_GUIDANCE, PAPER_STEPS = 512, 7.5, 25


class _NothingToKeepInFloat32(logging.Filter):
    """diffusers warns on every ``.to(dtype)`` of a model, here listing no module at all
    (``from_pipe`` casts each component): a notice without content."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "should be kept in float32: []" not in record.getMessage()


class MotionAdapterMismatchError(ValueError):
    """The motion adapter was made for a UNet of another shape."""


@dataclass(frozen=True)
class VideoSettings:
    """How a clip is sampled and written."""

    height: int = PAPER_RESOLUTION
    width: int = PAPER_RESOLUTION
    num_frames: int = 16
    guidance_scale: float = PAPER_GUIDANCE
    num_inference_steps: int = PAPER_STEPS
    fps: int = 8
    seed: int = 0
    negative_prompt: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _per_block(value: int | list[int] | tuple[int, ...], blocks: int) -> list[int]:
    return [value] * blocks if isinstance(value, int) else list(value)


def check_adapter_fits(
    unet_config: dict[str, Any], adapter_config: dict[str, Any], adapter_name: str
) -> None:
    """Raise `MotionAdapterMismatchError` naming the difference and the fix, rather than the
    size mismatch deep inside ``UNetMotionModel.from_unet2d``."""
    unet_widths = list(unet_config["block_out_channels"])
    adapter_widths = list(adapter_config["block_out_channels"])
    unet_layers = _per_block(unet_config["layers_per_block"], len(unet_widths))
    adapter_layers = _per_block(adapter_config["motion_layers_per_block"], len(adapter_widths))
    groups = adapter_config.get("motion_norm_num_groups", 32)
    problems = []
    if unet_widths != adapter_widths:
        problems.append(f"block widths {adapter_widths}, the UNet's are {unet_widths}")
    elif unet_layers != adapter_layers:
        problems.append(f"{adapter_layers} layers per block, the UNet has {unet_layers}")
    elif any(width % groups for width in unet_widths):
        problems.append(f"norm groups {groups}, which do not divide the widths {unet_widths}")
    if problems:
        raise MotionAdapterMismatchError(
            f"the motion adapter {adapter_name!r} does not fit this UNet: it has "
            f"{problems[0]}. Use an adapter made for this base model: for SD 1.x, an "
            "AnimateDiff SD 1.5 adapter (e.g. guoyww/animatediff-motion-adapter-v1-5-2); "
            "for tiny-sd, tiny-motion-adapter."
        )


def animate(
    pipe: StableDiffusionPipeline, adapter: MotionAdapter, adapter_name: str
) -> AnimateDiffPipeline | AnimateDiffSDXLPipeline:
    """The SD (or SDXL) pipeline with the adapter's temporal layers, sampling with AnimateDiff's
    DDIM (linear betas, linspace timesteps: the schedule the motion modules were trained with,
    the SDXL beta's too)."""
    check_adapter_fits(dict(pipe.unet.config), dict(adapter.config), adapter_name)
    notices = logging.getLogger("diffusers.models.modeling_utils")
    if not any(isinstance(f, _NothingToKeepInFloat32) for f in notices.filters):
        notices.addFilter(_NothingToKeepInFloat32())
    xl = getattr(pipe, "text_encoder_2", None) is not None
    wrapper = AnimateDiffSDXLPipeline if xl else AnimateDiffPipeline
    video = wrapper.from_pipe(pipe, motion_adapter=adapter)
    # diffusers' UNetMotionModel.from_unet2d copies every spatial part but SDXL's added
    # (pooled text + size) embedding, which it leaves freshly initialised: carry it over.
    added = getattr(pipe.unet, "add_embedding", None)
    if added is not None:
        video.unet.add_embedding.load_state_dict(added.state_dict())
    video.scheduler = DDIMScheduler.from_config(
        pipe.scheduler.config,
        beta_schedule="linear",
        clip_sample=False,
        timestep_spacing="linspace",
        steps_offset=1,
    )
    return video


def generate_frames(
    pipe: AnimateDiffPipeline | AnimateDiffSDXLPipeline, prompt: str, settings: VideoSettings
) -> list[Image.Image]:
    """One clip's frames (seeded on the CPU, so a seed gives the same clip on any device)."""
    output = pipe(
        prompt=prompt,
        negative_prompt=settings.negative_prompt,
        num_frames=settings.num_frames,
        height=settings.height,
        width=settings.width,
        guidance_scale=settings.guidance_scale,
        num_inference_steps=settings.num_inference_steps,
        generator=torch.Generator("cpu").manual_seed(settings.seed),
        output_type="pil",
    )
    return list(output.frames[0])


def frame_grid(frames: list[Image.Image], columns: int = 8) -> torch.Tensor:
    """(3, H, W) in [0, 1]: the frames in reading order, `columns` per row."""
    stacked = np.stack([np.asarray(frame.convert("RGB"), dtype=np.float32) for frame in frames])
    images = torch.from_numpy(stacked / 255.0).permute(0, 3, 1, 2)
    return make_grid(images, columns=min(columns, len(frames)))


def write_video(frames: list[Image.Image], folder: Path, fps: int) -> dict[str, Path]:
    """``video.mp4`` (H.264 through imageio's ffmpeg), ``video.gif`` and ``frames.png``."""
    try:
        import imageio  # noqa: F401  (diffusers' MP4 writer needs it and its ffmpeg)
        import imageio_ffmpeg  # noqa: F401
    except ImportError:
        raise ImportError(
            "writing MP4 needs imageio and imageio-ffmpeg: pip install -e '.[video]'"
        ) from None
    from diffusers.utils import export_to_gif, export_to_video

    folder.mkdir(parents=True, exist_ok=True)
    paths = {
        "mp4": folder / "video.mp4",
        "gif": folder / "video.gif",
        "grid": folder / "frames.png",
    }
    export_to_video(frames, str(paths["mp4"]), fps=fps)
    export_to_gif(frames, str(paths["gif"]), fps=fps)
    grid = (frame_grid(frames) * 255).round().byte().permute(1, 2, 0).numpy()
    Image.fromarray(grid).save(paths["grid"])
    return paths
