"""The original-layout (LDM) checkpoint: diffusers' own converters give every tensor back,
for the tiny pipeline and for an SD 1.5-shaped one (4 levels, 2 layers per block)."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
)

from exports.single_file import (
    components_to_ldm,
    unet_to_ldm,
    vae_to_ldm,
    write_single_file,
)

SD1_MARKER = "model.diffusion_model.output_blocks.11.0.skip_connection.weight"  # diffusers' v1 key


def assert_same(expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor]) -> None:
    assert expected.keys() == got.keys()
    for key, value in expected.items():
        assert torch.equal(value, got[key].reshape(value.shape)), key


def test_the_tiny_pipeline_comes_back_through_from_single_file(
    tiny_sd_path: Path, tmp_path: Path
) -> None:
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd_path, safety_checker=None)
    path = write_single_file(tmp_path / "sd.safetensors", pipe.unet, pipe.vae, pipe.text_encoder)
    back = StableDiffusionPipeline.from_single_file(
        path, config=str(tiny_sd_path), safety_checker=None, local_files_only=True
    )
    for part in ("unet", "vae", "text_encoder"):
        assert_same(getattr(pipe, part).state_dict(), getattr(back, part).state_dict())


def test_an_sd15_shaped_unet_and_vae_convert_back_exactly() -> None:
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16, 16, 16), layers_per_block=2, norm_num_groups=4,
        cross_attention_dim=8, attention_head_dim=2,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    )  # fmt: skip
    vae = AutoencoderKL(
        block_out_channels=(8, 8, 16, 16), layers_per_block=2, norm_num_groups=4,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
    )  # fmt: skip
    ldm_unet = unet_to_ldm(unet.state_dict(), unet.config)
    assert SD1_MARKER in ldm_unet  # what diffusers recognises SD 1.x checkpoints by
    assert "model.diffusion_model.output_blocks.2.1.conv.weight" in ldm_unet  # no attention
    assert "model.diffusion_model.output_blocks.5.2.conv.weight" in ldm_unet  # after attention
    assert_same(unet.state_dict(), convert_ldm_unet_checkpoint(ldm_unet, dict(unet.config)))
    ldm_vae = vae_to_ldm(vae.state_dict(), vae.config)
    assert ldm_vae["first_stage_model.decoder.mid.attn_1.q.weight"].ndim == 4  # a 1x1 conv
    assert_same(vae.state_dict(), convert_ldm_vae_checkpoint(ldm_vae, dict(vae.config)))


def test_added_tokens_stay_out_of_the_single_file(tiny_sd_path: Path) -> None:
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd_path, safety_checker=None)
    rows = pipe.text_encoder.get_input_embeddings().weight.shape[0]
    state = components_to_ldm(pipe.unet, pipe.vae, pipe.text_encoder, vocab_size=rows - 3)
    key = "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"
    assert state[key].shape[0] == rows - 3


# Keys by which ComfyUI's and A1111's model detection and diffusers' loader recognise an SDXL
# base checkpoint's parts (the OpenCLIP tower's fused attention, the UNet's added embedding).
SDXL_MARKERS = (
    "conditioner.embedders.0.transformer.text_model.embeddings.position_embedding.weight",
    "conditioner.embedders.1.model.positional_embedding",
    "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight",
    "conditioner.embedders.1.model.text_projection",
    "model.diffusion_model.label_emb.0.0.weight",
    "first_stage_model.decoder.mid.attn_1.q.weight",
)


def test_the_tiny_sdxl_pipeline_comes_back_through_from_single_file(
    tiny_sdxl_path: Path, tmp_path: Path
) -> None:
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl_path)
    encoders = [pipe.text_encoder, pipe.text_encoder_2]
    state = components_to_ldm(pipe.unet, pipe.vae, encoders)
    assert all(key in state for key in SDXL_MARKERS)
    # OpenCLIP multiplies by its projection from the right: (width, projection_dim).
    projection = state["conditioner.embedders.1.model.text_projection"]
    assert torch.equal(projection, pipe.text_encoder_2.text_projection.weight.T)
    width = pipe.text_encoder_2.config.hidden_size
    fused = state["conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight"]
    assert fused.shape == (3 * width, width)
    path = write_single_file(tmp_path / "sdxl.safetensors", pipe.unet, pipe.vae, encoders)
    back = StableDiffusionXLPipeline.from_single_file(
        path, config=str(tiny_sdxl_path), local_files_only=True
    )
    for part in ("unet", "vae", "text_encoder", "text_encoder_2"):
        ours = {
            k: v for k, v in getattr(pipe, part).state_dict().items() if "position_ids" not in k
        }
        theirs = {
            k: v for k, v in getattr(back, part).state_dict().items() if "position_ids" not in k
        }
        assert_same(ours, theirs)
