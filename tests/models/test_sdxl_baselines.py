"""Every baseline on SDXL (tiny-sdxl): a training step moves only what the baseline trains, and
each export loads back through diffusers' own SDXL loaders (XTI: its SDXL pipeline) and samples
what the module samples."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from diffusers import DDIMScheduler, StableDiffusionXLPipeline, Transformer2DModel
from safetensors import safe_open
from safetensors.torch import load_file

from core.concept import ConceptSpec
from exports.external_formats import A1111_FOLDER, KOHYA_LORA, SDXL_EMBEDDING_KEYS, load_embedding
from exports.single_file import SINGLE_FILE
from models import (
    XTI,
    CustomDiffusion,
    DreamBooth,
    LoRA,
    TextualInversion,
    VisualEncoder,
    load_export,
)
from models.base import PersonalizationModule
from models.exports_loading import export_with_manifest
from models.visual_encoder import install_subject, load_subject_encoder
from models.xti import XTI_EMBEDS, XTIStableDiffusionXLPipeline, xti_pipeline, xti_text

pytestmark = pytest.mark.smoke
PROMPT = "a photo of a <v1> toy"
CONCEPTS = [ConceptSpec("<v1>", "toy")]


def one_step(module: PersonalizationModule) -> None:
    """One optimizer step on a random batch with SDXL's size conditioning."""
    batch = {
        "pixel_values": torch.rand(2, 3, 32, 32) * 2 - 1,
        "prompts": [PROMPT] * 2,
        "original_size": torch.tensor([[48, 64], [32, 32]]),
        "crop_top_left": torch.tensor([[0, 8], [0, 0]]),
    }
    params = [p for group in module.trainable_groups().values() for p in group]
    optimizer = torch.optim.SGD(params, lr=10.0)
    module.compute_losses(batch, module.sample_draws(batch, 0))["total"].backward()
    optimizer.step()


def snapshot(module: PersonalizationModule) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(before: dict[str, torch.Tensor], module: PersonalizationModule) -> set[str]:
    after = module.state_dict()
    return {k for k, v in before.items() if not torch.equal(v, after[k])}


def vector_tables(keys: set[str]) -> set[str]:
    """The encoders whose concept-vector tables are among ``keys``; any other key fails."""
    assert all(k.endswith("token_embedding.vectors") for k in keys), keys
    return {k.split(".")[0] for k in keys}


def sample_pipe(folder: Path) -> StableDiffusionXLPipeline:
    pipe = StableDiffusionXLPipeline.from_pretrained(folder)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def pipe_images(pipe: StableDiffusionXLPipeline) -> torch.Tensor:
    # negative_prompt "": the module encodes the empty negative (SDXL's pipeline would use
    # zeros for a missing one, force_zeros_for_empty_prompt).
    return pipe(
        PROMPT, negative_prompt="", generator=torch.Generator().manual_seed(0),
        num_inference_steps=3, guidance_scale=6.0, height=32, width=32, output_type="pt",
    ).images  # fmt: skip


def module_images(module: PersonalizationModule) -> torch.Tensor:
    return module.generate([PROMPT], seed=0, num_inference_steps=3, guidance_scale=6.0)


def assert_same_images(module: PersonalizationModule, pipe: StableDiffusionXLPipeline) -> None:
    ours, theirs = module_images(module), pipe_images(pipe)
    assert ours.shape == theirs.shape == (1, 3, 32, 32)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-4)


def test_textual_inversion_trains_both_encoders_vectors_only(
    tiny_sdxl_path: Path, tmp_path: Path
) -> None:
    module = TextualInversion(
        pretrained_model_name_or_path="tiny-sdxl", concepts=CONCEPTS, num_vectors=2
    )
    before = snapshot(module)
    one_step(module)
    assert vector_tables(changed(before, module)) == {"text_encoder", "text_encoder_2"}
    export = tmp_path / "export"
    export_with_manifest(module, export)
    with safe_open(str(export / "learned_embeds.safetensors"), framework="pt") as handle:
        assert set(handle.keys()) == set(SDXL_EMBEDDING_KEYS)  # A1111 / ComfyUI's SDXL keys
        assert handle.get_tensor("clip_l").shape == (2, 32) and handle.metadata()["token"] == "<v1>"
        torch.testing.assert_close(
            handle.get_tensor("clip_g"), module.encoder_concept_tokens[1].vectors_of(0)
        )
    assert (export / A1111_FOLDER / "v1.safetensors").is_file()
    pipe = sample_pipe(tiny_sdxl_path)
    plain = pipe_images(pipe)
    assert load_export(pipe, export).family == "sdxl"
    assert_same_images(module, pipe)
    assert (module_images(module) - plain).abs().max() > 1e-3


def test_lora_trains_adapters_and_loads_with_load_lora_weights(
    tiny_sdxl_path: Path, tmp_path: Path
) -> None:
    module = LoRA(
        pretrained_model_name_or_path="tiny-sdxl", concepts=CONCEPTS, train_text_encoder=True
    )
    before = snapshot(module)
    one_step(module)
    moved = changed(before, module)
    assert moved and all("lora_" in k for k in moved)
    for prefix in ("unet.", "text_encoder.", "text_encoder_2."):
        assert any(k.startswith(prefix) for k in moved), prefix
    export = tmp_path / "export"
    export_with_manifest(module, export)
    pipe = sample_pipe(tiny_sdxl_path)
    load_export(pipe, export)
    assert_same_images(module, pipe)


# The names SDXL's kohya LoRAs carry (sd-scripts' SDXL UNet is in the original layout; ComfyUI
# and A1111 match them against the checkpoint's diffusion_model.* names).
KOHYA_SDXL_UNET = re.compile(
    r"^lora_unet_(input_blocks_\d+|middle_block|output_blocks_\d+)_1_transformer_blocks_\d+_"
    r"attn[12]_(to_q|to_k|to_v|to_out_0)\.(lora_down\.weight|lora_up\.weight|alpha)$"
)
KOHYA_SDXL_TEXT = re.compile(
    r"^lora_te[12]_text_model_encoder_layers_\d+_self_attn_(q|k|v|out)_proj\."
    r"(lora_down\.weight|lora_up\.weight|alpha)$"
)


def test_sdxl_kohya_lora_has_the_clients_names_and_loads_through_diffusers_conversion(
    tiny_sdxl_path: Path, tmp_path: Path
) -> None:
    module = LoRA(
        pretrained_model_name_or_path="tiny-sdxl", concepts=CONCEPTS, train_text_encoder=True
    )
    one_step(module)
    export_with_manifest(module, tmp_path)
    keys = list(load_file(str(tmp_path / KOHYA_LORA)))
    assert all(KOHYA_SDXL_UNET.match(k) or KOHYA_SDXL_TEXT.match(k) for k in keys), keys[:5]
    assert {k.split("_")[1] for k in keys} == {"unet", "te1", "te2"}
    # diffusers maps original-layout (SGM) kohya names back to its own blocks on load.
    pipe = sample_pipe(tiny_sdxl_path)
    pipe.load_lora_weights(tmp_path, weight_name=KOHYA_LORA)
    load_embedding(pipe, tmp_path / "<v1>.safetensors")
    assert_same_images(module, pipe)


def test_dreambooth_export_is_an_sdxl_pipeline_folder_and_single_file(
    tiny_sdxl_path: Path, tmp_path: Path
) -> None:
    module = DreamBooth(
        pretrained_model_name_or_path="tiny-sdxl", concepts=CONCEPTS, train_text_encoder=True,
        export_single_file=True,
    )  # fmt: skip
    before = snapshot(module)
    one_step(module)
    moved = changed(before, module)
    assert any(k.startswith("unet.") for k in moved)
    assert any(k.startswith("text_encoder_2.") for k in moved)
    assert not any(k.startswith("vae.") or "token_embedding.base" in k for k in moved)
    export = tmp_path / "export"
    export_with_manifest(module, export)
    assert_same_images(module, sample_pipe(export))
    # The original-layout file A1111 / ComfyUI load, with the concept's SDXL embedding beside
    # it (a single file holds no tokenizer), through diffusers' own single-file loader.
    single = StableDiffusionXLPipeline.from_single_file(
        export / SINGLE_FILE, config=str(tiny_sdxl_path), local_files_only=True
    )
    single.scheduler = DDIMScheduler.from_config(single.scheduler.config)
    load_embedding(single, export / A1111_FOLDER / "v1.safetensors")
    assert_same_images(module, single)


def test_custom_diffusion_trains_cross_attention_kv_and_loads_its_processors(
    tiny_sdxl_path: Path, tmp_path: Path
) -> None:
    module = CustomDiffusion(
        pretrained_model_name_or_path="tiny-sdxl", concepts=CONCEPTS, export_single_file=True
    )
    before = snapshot(module)
    one_step(module)
    moved = changed(before, module)
    kv = {k for k in moved if "_custom_diffusion" in k}
    assert kv and all("attn2" in k for k in kv)  # cross-attention only, as the paper trains
    assert vector_tables(moved - kv) == {"text_encoder", "text_encoder_2"}
    export = tmp_path / "export"
    export_with_manifest(module, export)
    pipe = sample_pipe(tiny_sdxl_path)
    load_export(pipe, export)
    assert_same_images(module, pipe)
    # The projections merged into one original-layout file, the tokens as its embedding.
    single = StableDiffusionXLPipeline.from_single_file(
        export / SINGLE_FILE, config=str(tiny_sdxl_path), local_files_only=True
    )
    single.scheduler = DDIMScheduler.from_config(single.scheduler.config)
    load_embedding(single, export / A1111_FOLDER / "v1.safetensors")
    assert_same_images(module, single)


def test_visual_encoder_maps_photos_to_both_encoders_vectors(
    tiny_sdxl_path: Path, tmp_path: Path
) -> None:
    module = VisualEncoder(pretrained_model_name_or_path="tiny-sdxl", concepts=CONCEPTS)
    before = snapshot(module)
    references = torch.rand(2, 3, 32, 32) * 2 - 1
    batch_step = {"reference_pixel_values": references}
    params = [p for group in module.trainable_groups().values() for p in group]
    optimizer = torch.optim.SGD(params, lr=1.0)
    batch = {
        "pixel_values": torch.rand(2, 3, 32, 32) * 2 - 1, "prompts": [PROMPT] * 2,
        "original_size": torch.tensor([[32, 32]] * 2), "crop_top_left": torch.zeros(2, 2),
        **batch_step,
    }  # fmt: skip
    module.compute_losses(batch, module.sample_draws(batch, 0))["total"].backward()
    optimizer.step()
    moved = changed(before, module)
    assert moved and all(".mapper." in k for k in moved), moved
    # A new subject's vectors: 32 + 48 wide (each tiny encoder's width), one part per encoder.
    export_with_manifest(module, tmp_path)
    encoder, token = load_subject_encoder(tmp_path)
    vectors = encoder.embed_subject(references)
    assert vectors.shape == (4, 32 + 48)
    module.set_subject(vectors)
    pipe = sample_pipe(tiny_sdxl_path)
    install_subject(pipe, vectors, token)
    states, _, pooled, _ = pipe.encode_prompt(
        [PROMPT], device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=False
    )
    ours = module.encode_text([PROMPT])
    torch.testing.assert_close(ours.hidden_states, states, rtol=0, atol=1e-5)
    torch.testing.assert_close(ours.text_embeds, pooled, rtol=0, atol=1e-5)
    assert_same_images(module, pipe)


def test_an_export_of_one_family_refuses_the_other_pipeline(
    tiny_sd_path: Path, tmp_path: Path
) -> None:
    module = TextualInversion(pretrained_model_name_or_path="tiny-sdxl", concepts=CONCEPTS)
    export_with_manifest(module, tmp_path)
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd_path, safety_checker=None)
    with pytest.raises(
        ValueError, match="export for the sdxl backbone .* not a StableDiffusionPipeline"
    ):
        load_export(pipe, tmp_path)


def attn2_outputs(module: XTI, text) -> dict[str, torch.Tensor]:
    """Every cross-attention's output in one UNet call, by its module path."""
    outputs: dict[str, torch.Tensor] = {}
    hooks = [
        m.register_forward_hook(lambda _m, _a, out, name=n: outputs.__setitem__(name, out))
        for n, m in module.unet.named_modules()
        if n.endswith("attn2")
    ]
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        module.predict_noise(latents, torch.tensor([500]), text)
    for hook in hooks:
        hook.remove()
    return outputs


def test_xti_gives_each_transformer_its_own_tokens_in_both_encoders(
    tiny_sdxl_path: Path, tmp_path: Path
) -> None:
    module = XTI(pretrained_model_name_or_path="tiny-sdxl", concepts=CONCEPTS)
    # A layer is a spatial transformer holding cross-attention (diffusers' Transformer2DModel);
    # tiny-sdxl's hold two cross-attentions each in the lower block, as SDXL's hold 2 or 10.
    transformers = [n for n, m in module.unet.named_modules() if isinstance(m, Transformer2DModel)]
    assert sorted(module.layer_names) == sorted(transformers) and len(transformers) == 4
    before = snapshot(module)
    one_step(module)
    assert vector_tables(changed(before, module)) == {"text_encoder", "text_encoder_2"}

    # Routing: change one layer's vectors (in both encoders); every cross-attention before
    # that transformer in forward order sees nothing new, both of its own see new text. (Not
    # text_layer's: the pooled text, read by every block through the time embedding, is its.)
    assert module.layer_names[module.text_layer] == "mid_block.attentions.0"  # P+'s coarse one
    first = attn2_outputs(module, module.encode_text([PROMPT]))
    layer = module.layer_names.index("up_blocks.0.attentions.0")
    with torch.no_grad():
        for encoder in range(2):
            module.layer_vectors(0, encoder)[layer] += 1.0
    second = attn2_outputs(module, module.encode_text([PROMPT]))
    order = list(first)  # hooks fire in forward order
    own = [n for n in order if n.startswith("up_blocks.0.attentions.0.")]
    assert len(own) == 2
    for name in order[: order.index(own[0])]:
        assert torch.equal(first[name], second[name]), name
    for name in own:
        assert not torch.allclose(first[name], second[name]), name

    # Each layer's text is what diffusers' SDXL pipeline encodes with that layer's vectors as
    # a plain SDXL embedding (both encoders); the pooled text is text_layer's.
    ours = module.encode_text([PROMPT])
    for index in (layer, module.text_layer):
        pipe = sample_pipe(tiny_sdxl_path)
        pairs = ((pipe.text_encoder, pipe.tokenizer), (pipe.text_encoder_2, pipe.tokenizer_2))
        for encoder, (text_encoder, tokenizer) in enumerate(pairs):
            vector = module.layer_vectors(0, encoder)[index].detach()
            pipe.load_textual_inversion(
                vector, token="<v1>", text_encoder=text_encoder, tokenizer=tokenizer
            )
        states, _, pooled, _ = pipe.encode_prompt(
            PROMPT, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=False
        )
        length = states.shape[1]
        own_states = ours.layer_states[:, index * length : (index + 1) * length]
        torch.testing.assert_close(own_states, states, rtol=0, atol=1e-5)
    torch.testing.assert_close(ours.text_embeds, pooled, rtol=0, atol=1e-5)

    # The export: each encoder's per-layer vectors under its SDXL name, and the family's XTI
    # pipeline generates what the module generates.
    export = tmp_path / "export"
    export_with_manifest(module, export)
    with safe_open(str(export / XTI_EMBEDS), framework="pt") as handle:
        assert set(handle.keys()) == {"clip_l/<v1>", "clip_g/<v1>"}
        assert handle.get_tensor("clip_g/<v1>").shape == (4, 1, 48)
    xti_pipe = xti_pipeline(str(tiny_sdxl_path), export)
    assert isinstance(xti_pipe, XTIStableDiffusionXLPipeline)
    xti_pipe.scheduler = DDIMScheduler.from_config(xti_pipe.scheduler.config)
    xti_pipe.set_progress_bar_config(disable=True)
    assert_same_images(module, xti_pipe)
    with pytest.raises(ValueError, match="2 text encoder"):
        XTI(concepts=CONCEPTS, init_embeddings=str(export))


def test_the_xti_pipeline_reads_the_pooled_text_of_the_layer_trained_with(
    tiny_sdxl_path: Path, tmp_path: Path
) -> None:
    # SDXL's pooled text is text_layer's: an export trained with another layer than the
    # default must condition the pipeline the same way (the export records the layer).
    module = XTI(pretrained_model_name_or_path="tiny-sdxl", concepts=CONCEPTS, text_layer=0)
    with torch.no_grad():
        for encoder in range(2):
            vectors = module.encoder_concept_tokens[encoder].embedding.vectors
            vectors.copy_(torch.randn(vectors.shape, generator=torch.Generator().manual_seed(3)))
    export_with_manifest(module, tmp_path)
    pipe = xti_pipeline(str(tiny_sdxl_path), tmp_path)
    ours = module.encode_text([PROMPT])
    theirs = xti_text(pipe, [PROMPT])
    torch.testing.assert_close(theirs.text_embeds, ours.text_embeds, rtol=0, atol=1e-6)
    torch.testing.assert_close(theirs.conditioning, ours.conditioning, rtol=0, atol=1e-6)
