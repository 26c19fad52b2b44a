"""generate_video.py: a run's export in AnimateDiff, written as MP4/GIF/grid and to TensorBoard."""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from pathlib import Path

import imageio.v3 as iio
import pytest
import torch
from diffusers import DDIMScheduler, MotionAdapter
from export_sampling import fresh_pipe, module_sample, pipe_sample
from helpers import REPO_ROOT
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import generate_video
from core.concept import ConceptSpec
from exports.manifest import ExportManifest, write_manifest
from generation.video import (
    MotionAdapterMismatchError,
    VideoSettings,
    animate,
    check_adapter_fits,
)
from models import CustomDiffusion, DreamBooth, LoRA, TextualInversion, export_with_manifest
from models.base import PersonalizationModule
from pretrained.tiny_motion_adapter import (
    TINY_MOTION_ADAPTER_NAME,
    TINY_SDXL_MOTION_ADAPTER_NAME,
    resolve_motion_adapter,
)
from train import main as train_main

pytestmark = pytest.mark.slow  # runs training end to end, or a process grid

CONCEPTS = [ConceptSpec("<v1>", "toy")]
BASELINES: dict[str, Callable[[], PersonalizationModule]] = {
    "TextualInversion": lambda: TextualInversion(concepts=CONCEPTS),
    "CustomDiffusion": lambda: CustomDiffusion(concepts=CONCEPTS),
    "LoRA": lambda: LoRA(concepts=CONCEPTS, rank=4, alpha=8.0),
    "DreamBooth": lambda: DreamBooth(concepts=CONCEPTS),
}


def _randomise_trained(module: PersonalizationModule, seed: int) -> None:
    """Move every trained weight (seeded), so the export is far from the base model."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            if param.requires_grad:
                param.add_(0.05 * torch.randn(param.shape, generator=generator))


@pytest.fixture(scope="module")
def exports(
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, tuple[PersonalizationModule, Path]]:
    made = {}
    for kind, build in BASELINES.items():
        module = build()
        _randomise_trained(module, seed=len(made))
        folder = tmp_path_factory.mktemp(f"{kind}-export")
        export_with_manifest(module, folder)
        made[kind] = (module, folder)
    return made


@pytest.mark.parametrize("kind", list(BASELINES))
def test_each_export_gives_a_plain_pipeline_that_generates_the_module_images(
    kind: str, exports: dict, tiny_sd_path: Path
) -> None:
    module, folder = exports[kind]
    manifest = generate_video.video_export(folder)
    assert manifest.baseline == kind
    pipe = generate_video.concept_pipeline(str(tiny_sd_path), folder, manifest, torch.float32)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    # Plain UNet weights: what a motion UNet can take (no LoRA layers, no K/V processors).
    assert not any("lora" in name for name, _ in pipe.unet.named_parameters())
    assert not any("custom_diffusion" in name for name, _ in pipe.unet.named_parameters())
    loaded, own = pipe_sample(pipe), module_sample(module)
    assert torch.allclose(loaded, own, atol=1e-4, rtol=0), (loaded - own).abs().max()
    assert (loaded - pipe_sample(fresh_pipe(tiny_sd_path))).abs().max() > 1e-2


@pytest.mark.parametrize("kind", ["CustomDiffusion", "LoRA"])
def test_the_motion_unet_carries_every_concept_weight(
    kind: str, exports: dict, tiny_sd_path: Path
) -> None:
    _, folder = exports[kind]
    manifest = generate_video.video_export(folder)
    pipe = generate_video.concept_pipeline(str(tiny_sd_path), folder, manifest, torch.float32)
    spatial = {name: tensor.clone() for name, tensor in pipe.unet.state_dict().items()}
    adapter = MotionAdapter.from_pretrained(resolve_motion_adapter(TINY_MOTION_ADAPTER_NAME))
    motion = animate(pipe, adapter, TINY_MOTION_ADAPTER_NAME).unet.state_dict()
    assert all(torch.equal(motion[name], tensor) for name, tensor in spatial.items())
    assert any("motion_modules" in name for name in motion)


def test_the_paper_defaults() -> None:
    settings = VideoSettings()
    assert (settings.height, settings.width) == (512, 512)
    assert (settings.guidance_scale, settings.num_inference_steps) == (7.5, 25)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1-step Custom Diffusion run with the tiny overlay, as the README trains one."""
    root = tmp_path_factory.mktemp("video-run")
    cli = train_main([
        "fit", "--config", str(REPO_ROOT / "configs" / "custom_diffusion.yaml"),
        "--config", str(REPO_ROOT / "configs" / "tiny.yaml"),
        "--trainer.max_steps", "1", "--trainer.default_root_dir", str(root),
        "--trainer.callbacks=[]", "--trainer.enable_checkpointing", "false",
    ])  # fmt: skip
    return Path(cli.trainer.log_dir)


def test_a_run_becomes_a_video_in_its_eval_folder(trained_run: Path) -> None:
    args = ["--run", str(trained_run), "--frames", "4", "--steps", "2", "--fps", "4"]
    assert generate_video.main(args) == 0
    folder = trained_run / "eval" / "video-1"
    settings = json.loads((folder / "settings.json").read_text())
    assert settings["prompt"] == "a <v1> toy running on the grass"
    assert settings["baseline"] == "CustomDiffusion"
    assert settings["motion_adapter"] == TINY_MOTION_ADAPTER_NAME
    assert (settings["height"], settings["guidance_scale"]) == (32, 7.5)
    video = iio.imread(folder / "video.mp4")  # read back through ffmpeg
    assert video.shape == (4, 32, 32, 3)
    with Image.open(folder / "video.gif") as gif:
        assert gif.n_frames == 4 and gif.size == (32, 32)
    with Image.open(folder / "frames.png") as grid:  # 4 frames in a row, 2 px padding
        assert grid.size == (4 * 34 + 2, 36)
    events = EventAccumulator(str(folder))
    events.Reload()
    assert "video/frames" in events.Tags()["images"]
    assert generate_video.main(args) == 0  # a second call: a new folder, the first kept
    assert (trained_run / "eval" / "video-2" / "video.mp4").is_file()
    assert (folder / "video.mp4").is_file()


def test_an_export_alone_takes_its_base_model_from_its_export_json(
    trained_run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    args = ["--export", str(trained_run / "export"), "--concept", "<v1> toy", "--output", str(out),
            "--frames", "2", "--steps", "1", "--fps", "2"]  # fmt: skip
    assert generate_video.main(args) == 0
    settings = json.loads((out / "settings.json").read_text())
    assert (settings["pretrained"], settings["baseline"]) == ("tiny-sd", "CustomDiffusion")
    assert (settings["height"], settings["width"]) == (32, 32)  # tiny-sd's size, from the base


def _error(capsys: pytest.CaptureFixture[str], args: list[str]) -> str:
    assert generate_video.main(args) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def test_an_adapter_for_another_unet_is_a_clear_error(
    trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = MotionAdapter(block_out_channels=(16, 32), motion_norm_num_groups=8,
                          motion_layers_per_block=1)  # fmt: skip
    other.save_pretrained(tmp_path / "adapter")
    message = _error(capsys, ["--run", str(trained_run), "--motion-adapter",
                              str(tmp_path / "adapter"), "--frames", "2"])  # fmt: skip
    assert "does not fit" in message and "[16, 32]" in message and "[32, 64]" in message
    layers = MotionAdapter(block_out_channels=(32, 64), motion_norm_num_groups=16,
                           motion_layers_per_block=2)  # fmt: skip
    layers.save_pretrained(tmp_path / "layers")
    message = _error(capsys, ["--run", str(trained_run), "--motion-adapter",
                              str(tmp_path / "layers"), "--frames", "2"])  # fmt: skip
    assert "layers per block" in message
    assert not (trained_run / "eval" / "video-3").exists()


def test_bad_input_gets_one_line(
    trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    xti = tmp_path / "xti"
    xti.mkdir()
    (xti / "xti_embeds.safetensors").write_bytes(b"")  # refused before any weights load
    write_manifest(
        xti, ExportManifest("XTI", "tiny-sd", {"xti_embeds.safetensors": "xti-embeddings"})
    )
    message = _error(capsys, ["--export", str(xti), "--output", str(tmp_path / "out")])
    assert "XTI export" in message and "xti_pipeline" in message
    subject = tmp_path / "subject"
    subject.mkdir()
    write_manifest(subject, ExportManifest("VisualEncoder", "tiny-sd", {}))
    message = _error(capsys, ["--export", str(subject), "--output", str(tmp_path / "out")])
    assert "VisualEncoder export" in message and "install_subject" in message
    (xti / "export.json").unlink()  # files, but no manifest: not an export folder
    message = _error(capsys, ["--export", str(xti), "--output", str(tmp_path / "out")])
    assert "has no export.json" in message and "export/step-<N>" in message
    assert "does not exist" in _error(
        capsys, ["--run", str(trained_run), "--export", str(tmp_path / "missing")]
    )
    assert "--concept" in _error(
        capsys, ["--export", str(trained_run / "export"), "--pretrained", "tiny-sd",
                 "--output", str(tmp_path / "out")],
    )  # fmt: skip
    assert "config.yaml" in _error(capsys, ["--run", str(tmp_path)])
    other = tmp_path / "other"
    other.mkdir()  # a family AnimateDiff has no motion adapters for
    write_manifest(other, ExportManifest("LoRA", "some-model", {}, family="flux"))
    message = _error(capsys, ["--export", str(other), "--output", str(tmp_path / "out")])
    assert "export for the flux backbone" in message and "sd1 and sdxl" in message
    assert not (tmp_path / "out").exists()


def test_sd15_fits_animatediffs_sd15_adapter_shape() -> None:
    # MotionAdapter's defaults are the SD 1.5 adapters' shape (4 blocks, 2 layers each);
    # compared as configs: building either at full size is not needed to know they fit.
    defaults = {
        name: parameter.default
        for name, parameter in inspect.signature(MotionAdapter.__init__).parameters.items()
        if name != "self"
    }
    sd15_unet = {"block_out_channels": [320, 640, 1280, 1280], "layers_per_block": 2}
    check_adapter_fits(sd15_unet, defaults, "sd15-shaped")
    with pytest.raises(MotionAdapterMismatchError, match="block widths"):
        check_adapter_fits({"block_out_channels": [32, 64], "layers_per_block": 1}, defaults, "x")


def test_an_sdxl_export_becomes_a_video_through_animatediffs_sdxl_pipeline(
    tmp_path: Path, tiny_sdxl_path: Path
) -> None:
    module = LoRA(pretrained_model_name_or_path="tiny-sdxl", concepts=CONCEPTS, rank=4)
    _randomise_trained(module, seed=7)
    export = tmp_path / "export"
    export_with_manifest(module, export)
    # The LoRA fused into the SDXL UNet, every spatial weight kept by the motion UNet.
    manifest = generate_video.video_export(export)
    pipe = generate_video.concept_pipeline("tiny-sdxl", export, manifest, torch.float32)
    assert not any(".lora_" in k for k in pipe.unet.state_dict())  # fused, then unloaded
    from diffusers import UNet2DConditionModel

    base = UNet2DConditionModel.from_pretrained(tiny_sdxl_path, subfolder="unet").state_dict()
    assert any(not torch.equal(v, base[k]) for k, v in pipe.unet.state_dict().items())
    spatial = {name: tensor.clone() for name, tensor in pipe.unet.state_dict().items()}
    adapter = MotionAdapter.from_pretrained(resolve_motion_adapter(TINY_SDXL_MOTION_ADAPTER_NAME))
    video_pipe = animate(pipe, adapter, TINY_SDXL_MOTION_ADAPTER_NAME)
    assert type(video_pipe).__name__ == "AnimateDiffSDXLPipeline"
    motion = video_pipe.unet.state_dict()
    assert all(torch.equal(motion[name], tensor) for name, tensor in spatial.items())
    out = tmp_path / "video"
    args = ["--export", str(export), "--concept", "<v1> toy", "--output", str(out),
            "--frames", "2", "--steps", "1", "--fps", "2"]  # fmt: skip
    assert generate_video.main(args) == 0
    settings = json.loads((out / "settings.json").read_text())
    assert settings["motion_adapter"] == TINY_SDXL_MOTION_ADAPTER_NAME
    assert (settings["pretrained"], settings["height"]) == ("tiny-sdxl", 32)
    assert iio.imread(out / "video.mp4").shape == (2, 32, 32, 3)
