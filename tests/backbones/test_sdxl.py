"""The SDXL family conditions the UNet as diffusers' own SDXL pipeline does.

Each check is against diffusers' code, not ours: ``encode_prompt`` for the text states and the
pooled embedding, ``_get_add_time_ids`` for the size ids, and a direct UNet call for the
denoiser's inputs.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionXLPipeline

from backbones import choose_family
from backbones.sdxl import repad_after_end
from core.concept import ConceptSpec
from models import TextualInversion
from step.draws import SampleDraws

PROMPTS = ["a photo of a dog", "a red cat on the beach in the snow"]


@pytest.fixture(scope="module")
def module(tiny_sdxl_path: Path) -> TextualInversion:
    return TextualInversion(
        pretrained_model_name_or_path="tiny-sdxl", concepts=[ConceptSpec("<v1>", "dog")]
    )


@pytest.fixture(scope="module")
def pipe(tiny_sdxl_path: Path) -> StableDiffusionXLPipeline:
    return StableDiffusionXLPipeline.from_pretrained(tiny_sdxl_path)


def test_text_states_and_pooled_embedding_are_diffusers_encode_prompt(
    module: TextualInversion, pipe: StableDiffusionXLPipeline
) -> None:
    ours = module.encode_text(PROMPTS)
    states, _, pooled, _ = pipe.encode_prompt(
        PROMPTS, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=False
    )
    assert ours.hidden_states.shape == states.shape == (2, 77, 32 + 48)
    torch.testing.assert_close(ours.hidden_states, states, rtol=0, atol=1e-6)
    torch.testing.assert_close(ours.text_embeds, pooled, rtol=0, atol=1e-6)


def test_the_second_tokenizer_pads_with_its_own_token(pipe: StableDiffusionXLPipeline) -> None:
    first = pipe.tokenizer(PROMPTS, padding="max_length", max_length=77, return_tensors="pt")
    second = pipe.tokenizer_2(PROMPTS, padding="max_length", max_length=77, return_tensors="pt")
    end, pad = pipe.tokenizer.eos_token_id, pipe.tokenizer_2.pad_token_id
    assert torch.equal(repad_after_end(first.input_ids, end, pad), second.input_ids)


def test_size_ids_are_diffusers_add_time_ids(
    module: TextualInversion, pipe: StableDiffusionXLPipeline
) -> None:
    family = module.family
    batch = {"original_size": torch.tensor([[480, 640], [512, 300]]),
             "crop_top_left": torch.tensor([[0, 80], [106, 0]])}  # fmt: skip
    ids = family.time_ids(batch, rows=3, resolution=32, device=torch.device("cpu"))
    projection = pipe.text_encoder_2.config.projection_dim
    expected = [
        pipe._get_add_time_ids((480, 640), (0, 80), (32, 32), torch.float32, projection),
        pipe._get_add_time_ids((512, 300), (106, 0), (32, 32), torch.float32, projection),
        pipe._get_add_time_ids(
            (32, 32), (0, 0), (32, 32), torch.float32, projection
        ),  # a prior row
    ]
    torch.testing.assert_close(ids.float(), torch.cat(expected))


def test_predict_noise_is_the_unet_called_with_sdxl_conditioning(
    module: TextualInversion, pipe: StableDiffusionXLPipeline
) -> None:
    draws = SampleDraws(0, [1, 2], 0, torch.device("cpu"))
    noisy = draws.randn((4, 16, 16))
    timesteps = torch.tensor([10, 700])
    ours = module.predict_noise(noisy, timesteps, module.encode_text(PROMPTS))
    states, _, pooled, _ = pipe.encode_prompt(
        PROMPTS, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=False
    )
    time_ids = pipe._get_add_time_ids((32, 32), (0, 0), (32, 32), torch.float32, 32).repeat(2, 1)
    added = {"text_embeds": pooled, "time_ids": time_ids}
    direct = pipe.unet(noisy, timesteps, encoder_hidden_states=states, added_cond_kwargs=added)
    torch.testing.assert_close(ours, direct.sample, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="pass the TextEncoding itself"):
        module.predict_noise(noisy, timesteps, states)


def test_the_family_is_read_from_the_model_and_a_mismatch_is_one_line(
    tiny_sdxl_path: Path, tiny_sd_path: Path
) -> None:
    assert choose_family(str(tiny_sdxl_path))[0].name == "sdxl"
    assert choose_family(str(tiny_sd_path))[0].name == "sd1"
    assert choose_family("tiny", "sdxl")[1] == "tiny-sdxl"
    assert choose_family("tiny")[1] == "tiny-sd"
    with pytest.raises(
        ValueError, match="is an sdxl pipeline but model.init_args.backbone is 'sd1'"
    ):
        choose_family(str(tiny_sdxl_path), "sd1")
    with pytest.raises(ValueError, match="use auto or one of"):
        choose_family("tiny", "sd3")


def test_a_vae_of_its_own_replaces_the_models(tiny_sdxl_path: Path, tmp_path: Path) -> None:
    from diffusers import AutoencoderKL

    own = AutoencoderKL.from_pretrained(tiny_sdxl_path, subfolder="vae")
    with torch.no_grad():
        own.decoder.conv_out.bias.add_(0.5)  # a fine-tuned VAE, as the fp16-fix one is
    own.save_pretrained(tmp_path / "fp16-fix")
    concepts = [ConceptSpec("<v1>", "dog")]
    module = TextualInversion(
        pretrained_model_name_or_path="tiny-sdxl", concepts=concepts,
        vae_name_or_path=str(tmp_path / "fp16-fix"),
    )  # fmt: skip
    torch.testing.assert_close(module.vae.decoder.conv_out.bias, own.decoder.conv_out.bias)
    wide = AutoencoderKL(latent_channels=8, block_out_channels=(16,), norm_num_groups=16,
                         down_block_types=("DownEncoderBlock2D",),
                         up_block_types=("UpDecoderBlock2D",))  # fmt: skip
    wide.save_pretrained(tmp_path / "wide")
    with pytest.raises(ValueError, match="makes 8-channel latents; the denoiser reads 4"):
        TextualInversion(pretrained_model_name_or_path="tiny-sdxl", concepts=concepts,
                         vae_name_or_path=str(tmp_path / "wide"))  # fmt: skip


def test_sdxls_legacy_end_of_text_config_changes_nothing_but_what_diffusers_pools(
    tiny_sdxl_path: Path,
) -> None:
    """SDXL's published text-encoder configs say eos_token_id 2 (the tokenizer's is 49407):
    the second tokenizer's padding must still follow the real end-of-text, and the pooled
    embedding is what the encoder (and so diffusers' pipeline) computes with that config."""
    module = TextualInversion(
        pretrained_model_name_or_path="tiny-sdxl", concepts=[ConceptSpec("<v1>", "dog")]
    )
    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl_path)
    for encoder in (*module.text_encoders, pipe.text_encoder, pipe.text_encoder_2):
        encoder.config.eos_token_id = 2
        getattr(encoder, "text_model", encoder).eos_token_id = 2  # what pools reads
    ours = module.encode_text(PROMPTS)
    states, _, pooled, _ = pipe.encode_prompt(
        PROMPTS, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=False
    )
    torch.testing.assert_close(ours.hidden_states, states, rtol=0, atol=1e-6)
    torch.testing.assert_close(ours.text_embeds, pooled, rtol=0, atol=1e-6)
