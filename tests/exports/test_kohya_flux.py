"""The FLUX kohya LoRA file read back by diffusers' kohya-FLUX reader (``FluxPipeline.
lora_state_dict``, which converts sd-scripts' files): at FLUX.1-dev's own widths, which that
reader assumes, every layer's update survives the fusing; on a tiny FLUX whose blocks that reader
can split (double blocks only), the exported file generates the module's own images; the names
are BFL's original ones, those diffusers' single-file converter reads."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from diffusers import FluxPipeline, FluxTransformer2DModel
from safetensors.torch import load_file

from backbones.flux import Flux
from core.concept import ConceptSpec
from exports.external_formats import KOHYA_LORA, load_embedding
from exports.kohya_flux import kohya_flux_lora_state
from models import LoRA

RANK, ALPHA, WIDTH, MLP = 4, 8.0, 3072, 12288  # FLUX.1-dev's hidden and MLP widths
DOUBLE_LAYERS = {  # diffusers' layer -> (input width, output width)
    **{f"attn.{n}": (WIDTH, WIDTH) for n in ("to_q", "to_k", "to_v", "to_out.0", "to_add_out")},
    **{f"attn.add_{n}_proj": (WIDTH, WIDTH) for n in "qkv"},
    "ff.net.0.proj": (WIDTH, MLP),
    "ff.net.2": (MLP, WIDTH),
    "ff_context.net.0.proj": (WIDTH, MLP),
    "ff_context.net.2": (MLP, WIDTH),
}
SINGLE_LAYERS = {f"attn.to_{n}": (WIDTH, WIDTH) for n in "qkv"}  # diffusers' default targets
# BFL's original FLUX layer names (single-file converter), as kohya spells them.
ORIGINAL = re.compile(
    r"lora_unet_(double_blocks_\d+_(img|txt)_(attn_qkv|attn_proj|mlp_0|mlp_2|mod_lin)"
    r"|single_blocks_\d+_(linear1|linear2|modulation_lin))"
    r"\.(lora_down\.weight|lora_up\.weight|alpha)"
)


def random_adapters(layers: dict[str, tuple[int, int]], prefix: str, seed: int) -> dict:
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, (inputs, outputs) in layers.items():
        state[f"{prefix}.{name}.lora_A.weight"] = torch.randn(RANK, inputs, generator=generator)
        state[f"{prefix}.{name}.lora_B.weight"] = torch.randn(outputs, RANK, generator=generator)
    return state


def update(state: dict[str, torch.Tensor], path: str, scale: float) -> torch.Tensor:
    return scale * state[f"{path}.lora_B.weight"] @ state[f"{path}.lora_A.weight"]


@pytest.mark.smoke  # the newest allowed versions too
def test_every_layers_update_survives_diffusers_kohya_reader_at_flux_dev_widths() -> None:
    # One double block and the last single block (the reader walks FLUX-dev's 19 and 38).
    ours = {
        **random_adapters(DOUBLE_LAYERS, "transformer_blocks.3", seed=0),
        **random_adapters(SINGLE_LAYERS, "single_transformer_blocks.37", seed=1),
    }
    widths = {f"transformer_blocks.3.{n}": o for n, (_, o) in DOUBLE_LAYERS.items()}
    widths |= {f"single_transformer_blocks.37.{n}": o for n, (_, o) in SINGLE_LAYERS.items()}
    widths["single_transformer_blocks.37.proj_mlp"] = MLP
    kohya = kohya_flux_lora_state({"transformer": ours}, {"transformer": ALPHA}, widths)
    assert all(ORIGINAL.fullmatch(key) for key in kohya), sorted(kohya)
    assert {key.split(".")[0] for key in kohya} == {
        "lora_unet_double_blocks_3_img_attn_qkv", "lora_unet_double_blocks_3_txt_attn_qkv",
        "lora_unet_double_blocks_3_img_attn_proj", "lora_unet_double_blocks_3_txt_attn_proj",
        "lora_unet_double_blocks_3_img_mlp_0", "lora_unet_double_blocks_3_img_mlp_2",
        "lora_unet_double_blocks_3_txt_mlp_0", "lora_unet_double_blocks_3_txt_mlp_2",
        "lora_unet_single_blocks_37_linear1",
    }  # fmt: skip

    read = FluxPipeline.lora_state_dict({k: v.clone() for k, v in kohya.items()})
    read = read[0] if isinstance(read, tuple) else read
    for path in {key.rsplit(".", 2)[0] for key in ours}:
        theirs = update(read, f"transformer.{path}", 1.0)  # the reader folds in the scale
        assert torch.allclose(theirs, update(ours, path, ALPHA / RANK), atol=1e-3), path
    # The single block's MLP input has no adapter: the reader gets a zero update there.
    mlp = update(read, "transformer.single_transformer_blocks.37.proj_mlp", 1.0)
    assert mlp.shape == (MLP, WIDTH) and not mlp.any()


def test_a_layer_kohya_has_no_name_for_is_refused() -> None:
    state = random_adapters({"attn.norm_q": (WIDTH, WIDTH)}, "transformer_blocks.0", seed=0)
    with pytest.raises(ValueError, match="transformer_blocks.0.attn.norm_q"):
        kohya_flux_lora_state({"transformer": state}, {"transformer": ALPHA}, {})


@pytest.fixture(scope="module")
def double_blocks_only_flux(tiny_flux_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny-flux without its single blocks: diffusers' kohya reader splits a single block's
    ``linear1`` at FLUX-dev's widths, but a double block's ``qkv`` into equal thirds."""
    folder = tmp_path_factory.mktemp("flux-double-only")
    pipe = FluxPipeline.from_pretrained(tiny_flux_path)
    config = dict(pipe.transformer.config, num_single_layers=0)
    transformer = FluxTransformer2DModel.from_config(config)
    missing = transformer.load_state_dict(pipe.transformer.state_dict(), strict=False)
    assert not missing.missing_keys and missing.unexpected_keys  # the single blocks only
    pipe.transformer = transformer
    pipe.save_pretrained(folder)
    return folder


@pytest.mark.slow
def test_the_kohya_file_generates_the_modules_images_in_flux_pipeline(
    double_blocks_only_flux: Path, tmp_path: Path
) -> None:
    module = LoRA(
        pretrained_model_name_or_path=str(double_blocks_only_flux),
        concepts=[ConceptSpec("<v1>", "toy")], rank=4, alpha=8.0, train_text_encoder=True,
    )  # fmt: skip
    assert isinstance(module.family, Flux)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if ".lora_" in name:
                param.copy_(0.3 * torch.randn(param.shape, generator=generator))
    module.export(tmp_path)
    keys = load_file(str(tmp_path / KOHYA_LORA)).keys()
    assert any(k.startswith("lora_te1_text_model_encoder_layers_0_self_attn_q_proj") for k in keys)
    assert all(ORIGINAL.fullmatch(k) for k in keys if k.startswith("lora_unet")), sorted(keys)

    prompt, steps = "a photo of a <v1> toy", 3
    ours = module.generate([prompt], seed=0, num_inference_steps=steps, guidance_scale=3.5)
    pipe = FluxPipeline.from_pretrained(double_blocks_only_flux)
    pipe.load_lora_weights(tmp_path, weight_name=KOHYA_LORA)
    load_embedding(pipe, tmp_path / "<v1>.safetensors")  # its {"clip_l", "t5"} vectors
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        theirs = pipe(
            prompt, generator=torch.Generator().manual_seed(0), num_inference_steps=steps,
            guidance_scale=3.5, height=32, width=32, output_type="pt",
            max_sequence_length=pipe.tokenizer_2.model_max_length,
        ).images  # fmt: skip
    assert torch.allclose(ours, theirs, atol=1e-4, rtol=0), (ours - theirs).abs().max()
