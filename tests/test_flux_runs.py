"""FLUX runs: LoRA (pivotal: adapters and tokens in CLIP and T5) resumes bitwise equal; its
export loads into diffusers' FluxPipeline with diffusers' own loaders and samples the module's
images; the recipes and analysis callbacks run through train.py on tiny-flux; attention maps
come from the joint attention's text-to-image part."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from baseline_checks import assert_resume_is_exact
from diffusers import FluxPipeline
from helpers import REPO_ROOT, clif_two_step_options, optimizer_with_lr, tiny_datamodule

from backbones.flow_matching_settings import FlowMatchingSettings
from callbacks.attention_capture import AttentionCapture
from core.concept import ConceptSpec
from models import LoRA
from models.base import PersonalizationModule
from models.lora import LORA_WEIGHTS, load_lora
from train import main

pytestmark = pytest.mark.slow
FLUX = ["--config", "configs/backbones/flux.yaml", "--config", "configs/tiny.yaml"]
PROMPT, STEPS, GUIDANCE = "a photo of a <v1> toy", 3, 3.5


def test_a_flux_run_resumes_bitwise_equal(tmp_path: Path) -> None:
    def build() -> tuple[PersonalizationModule, object]:
        datamodule = tiny_datamodule(repeats=1)
        module = LoRA(
            pretrained_model_name_or_path="tiny-flux", concepts=datamodule.concepts,
            optimizer=optimizer_with_lr(1e-2), train_text_encoder=True, train_tokens=True,
            flow_matching=FlowMatchingSettings(weighting_scheme="logit_normal"),
        )  # fmt: skip
        return module, datamodule

    assert_resume_is_exact(build, tmp_path)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[LoRA, Path]:
    """Random adapters (alpha != rank) on the transformer and CLIP, random tokens in both."""
    module = LoRA(
        pretrained_model_name_or_path="tiny-flux", concepts=[ConceptSpec("<v1>", "toy")],
        rank=4, alpha=8.0, train_text_encoder=True, train_tokens=True,
    )  # fmt: skip
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if ".lora_" in name or name.endswith("embedding.vectors"):
                param.copy_(0.3 * torch.randn(param.shape, generator=generator))
    folder = tmp_path_factory.mktemp("flux-lora")
    module.export(folder)
    return module, folder


def pipe_sample(pipe: FluxPipeline) -> torch.Tensor:
    pipe.set_progress_bar_config(disable=True)
    return pipe(
        PROMPT, generator=torch.Generator().manual_seed(0), num_inference_steps=STEPS,
        guidance_scale=GUIDANCE, height=32, width=32, output_type="pt",
        max_sequence_length=pipe.tokenizer_2.model_max_length,
    ).images  # fmt: skip


@pytest.mark.smoke  # on the newest versions setup.cfg allows too
def test_the_export_loads_into_flux_pipeline_and_samples_the_same(
    exported: tuple[LoRA, Path], tiny_flux_path: Path
) -> None:
    module, folder = exported
    ours = module.generate([PROMPT], seed=0, num_inference_steps=STEPS, guidance_scale=GUIDANCE)
    with torch.no_grad():
        plain = pipe_sample(FluxPipeline.from_pretrained(tiny_flux_path))
    pipe = FluxPipeline.from_pretrained(tiny_flux_path)
    load_lora(pipe, folder)  # load_lora_weights, then the {"clip_l", "t5"} file per encoder
    with torch.no_grad():
        loaded = pipe_sample(pipe)
    assert torch.allclose(ours, loaded, atol=1e-4, rtol=0), (ours - loaded).abs().max()
    assert (ours - plain).abs().max() > 1e-2
    # diffusers' own calls, by hand: the LoRA file names the transformer and CLIP only.
    again = FluxPipeline.from_pretrained(tiny_flux_path)
    again.load_lora_weights(folder, weight_name=LORA_WEIGHTS)
    for name, value in pipe.transformer.state_dict().items():
        assert torch.equal(again.transformer.state_dict()[name], value), name
    t5_id = pipe.tokenizer_2.convert_tokens_to_ids("<v1>")
    row = pipe.text_encoder_2.get_input_embeddings().weight[t5_id].detach()
    assert torch.equal(row, module.encoder_concept_tokens[1].vectors_of(0)[0].detach())


def test_joint_attention_maps_are_text_distributions_and_leave_images_alone(
    exported: tuple[LoRA, Path],
) -> None:
    module, _ = exported
    prompts = ["a <v1> toy on the beach", "a <v1> toy in the jungle"]
    before = module.generate(prompts, seed=0, num_inference_steps=2)
    with AttentionCapture(module.unet, resolution=8, family=module.family) as capture:
        during = module.generate(prompts, seed=0, num_inference_steps=2)
    assert torch.equal(before, during)
    blocks = len(module.unet.transformer_blocks) + len(module.unet.single_transformer_blocks)
    assert capture.calls == 2 * blocks  # every joint attention, every step
    maps = capture.maps
    assert maps.shape == (2, module.tokenizer_2.model_max_length, 8, 8)
    torch.testing.assert_close(maps.sum(dim=1), torch.ones(2, 8, 8))


def test_the_recipes_and_callbacks_run_through_train_py(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO_ROOT)
    recipes = {
        "lora": ["configs/flux/lora.yaml"],
        "pivotal": ["configs/flux/pivotal_tuning.yaml"],
        "accord": ["configs/accord/lora.yaml", "configs/accord/flux/lora.yaml"],
        "spl": ["configs/flux/lora.yaml", "configs/classdiffusion/flux_lora.yaml"],
        "classdiffusion": ["configs/classdiffusion/custom_diffusion.yaml", FLUX[1]],
    }
    for name, configs in recipes.items():
        root = tmp_path / name
        cli = main(
            [
                "fit", *(w for c in configs for w in ("--config", c)),
                "--config", "configs/tiny.yaml",
                "--trainer.default_root_dir", str(root), "--trainer.max_steps", "2",
                "--trainer.enable_progress_bar", "false",
            ]
        )  # fmt: skip
        assert cli.model.family.name == "flux"
        expected = {"accord": ["dd"], "spl": ["spl"], "classdiffusion": ["spl"]}.get(name, [])
        assert [r.name for r in cli.model.regularizers] == expected
        assert list(root.rglob("events.out.tfevents*"))
        assert list(root.rglob("export.json"))


def test_dreambooth_on_flux_exports_a_pipeline_that_samples_the_same(
    tmp_path: Path, tiny_flux_path: Path
) -> None:
    """The whole transformer trains; the export is a FluxPipeline folder whose T5 and CLIP
    hold the identifier's rows at its ids (T5's inside its padded matrix)."""
    from models import DreamBooth, load_export
    from models.exports_loading import export_with_manifest

    module = DreamBooth(
        pretrained_model_name_or_path="tiny-flux", concepts=[ConceptSpec("<v1>", "toy")],
        train_tokens=True,
    )  # fmt: skip
    assert all(p.requires_grad for p in module.unet.parameters())
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for tokens in module.encoder_concept_tokens:
            tokens.embedding.vectors.normal_(generator=generator)
        for param in module.unet.parameters():
            param.add_(0.01 * torch.randn(param.shape, generator=generator))
    folder = tmp_path / "export"
    export_with_manifest(module, folder)
    ours = module.generate([PROMPT], seed=0, num_inference_steps=STEPS, guidance_scale=GUIDANCE)
    with torch.no_grad():
        alone = pipe_sample(FluxPipeline.from_pretrained(folder))
        into = FluxPipeline.from_pretrained(tiny_flux_path)
        load_export(into, folder)
        loaded = pipe_sample(into)
    assert torch.allclose(ours, alone, atol=1e-4, rtol=0), (ours - alone).abs().max()
    assert torch.allclose(ours, loaded, atol=1e-4, rtol=0), (ours - loaded).abs().max()


def test_visual_encoder_maps_photos_to_clip_and_t5_vectors(
    tmp_path: Path, tiny_flux_path: Path
) -> None:
    """The mapper writes one vector of CLIP's and T5's widths side by side, each encoder's
    lookup reading its part; installed into FluxPipeline, the subject's token conditions as in
    the module."""
    from models import VisualEncoder
    from models.exports_loading import export_with_manifest
    from models.visual_encoder import install_subject, load_subject_encoder

    module = VisualEncoder(
        pretrained_model_name_or_path="tiny-flux", concepts=[ConceptSpec("<v1>", "toy")]
    )
    references = torch.rand(2, 3, 32, 32) * 2 - 1
    batch = {"pixel_values": torch.rand(2, 3, 32, 32) * 2 - 1, "prompts": [PROMPT] * 2,
             "reference_pixel_values": references}  # fmt: skip
    module.compute_losses(batch, module.sample_draws(batch, 0))["total"].backward()
    grads = {n: p.grad for n, p in module.named_parameters() if p.requires_grad}
    assert grads and all(".mapper." in n for n in grads)
    assert any(g is not None and g.abs().sum() > 0 for g in grads.values())
    export_with_manifest(module, tmp_path)
    encoder, token = load_subject_encoder(tmp_path)
    vectors = encoder.embed_subject(references)
    clip_width = module.text_encoder.config.hidden_size
    assert vectors.shape == (4, clip_width + module.text_encoder_2.config.d_model)
    module.set_subject(vectors)
    pipe = FluxPipeline.from_pretrained(tiny_flux_path)
    install_subject(pipe, vectors, token)
    ours = module.generate([PROMPT], seed=0, num_inference_steps=STEPS, guidance_scale=GUIDANCE)
    with torch.no_grad():
        theirs = pipe_sample(pipe)
    assert torch.allclose(ours, theirs, atol=1e-4, rtol=0), (ours - theirs).abs().max()


def test_custom_diffusion_trains_the_text_side_projections_and_loads_back(
    tmp_path: Path, tiny_flux_path: Path
) -> None:
    """On FLUX, Custom Diffusion's K/V are the double-stream blocks' projections of the text
    tokens (add_k_proj, add_v_proj); its export installs into FluxPipeline and samples the
    module's images."""
    from models import CustomDiffusion, load_export
    from models.exports_loading import export_with_manifest

    module = CustomDiffusion(
        pretrained_model_name_or_path="tiny-flux", concepts=[ConceptSpec("<v1>", "toy")]
    )
    trained = [n for n, p in module.named_parameters() if p.requires_grad]
    kv = [n for n in trained if n.startswith("unet.")]
    blocks = len(module.unet.transformer_blocks)
    assert len(kv) == blocks * 2 * 2  # add_k_proj, add_v_proj: weight and bias, each block
    assert all(".add_k_proj." in n or ".add_v_proj." in n for n in kv)
    tokens = set(trained) - set(kv)  # the concept's vectors in CLIP and T5
    assert len(tokens) == 2 and all(n.endswith(".vectors") for n in tokens)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in module.parameters():
            if param.requires_grad:
                param.add_(0.3 * torch.randn(param.shape, generator=generator))
    export_with_manifest(module, tmp_path)
    ours = module.generate([PROMPT], seed=0, num_inference_steps=STEPS, guidance_scale=GUIDANCE)
    pipe = FluxPipeline.from_pretrained(tiny_flux_path)
    load_export(pipe, tmp_path)
    with torch.no_grad():
        theirs = pipe_sample(pipe)
    assert torch.allclose(ours, theirs, atol=1e-4, rtol=0), (ours - theirs).abs().max()


def test_clifs_two_stages_run_on_flux(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stage 1's InfoNCE tunes the tokens (and a LoRA) of CLIP ViT-L, the encoder CLIF's
    official code compares; stage 2 starts each encoder's vectors, T5's too, from stage 1's
    {"clip_l", "t5"} file and trains a transformer LoRA."""
    monkeypatch.chdir(REPO_ROOT)
    common = [*FLUX, *clif_two_step_options(tmp_path)]
    one = main(["fit", "--config", "configs/clif/stage1_text.yaml", *common,
                "--trainer.default_root_dir", str(tmp_path / "one")])  # fmt: skip
    assert one.model.family.name == "flux"
    stage1 = tmp_path / "stage1"
    one.model.export(stage1)
    two = main(["fit", "--config", "configs/clif/stage2_lora.yaml", *common,
                "--model.init_args.stage1", str(stage1),
                "--data.init_args.augmentation.m_aug", "2",
                "--trainer.default_root_dir", str(tmp_path / "two")])  # fmt: skip
    assert two.model.family.name == "flux" and two.trainer.global_step == 2
    for ours, theirs in zip(two.model.encoder_concept_tokens, one.model.encoder_concept_tokens):
        assert ours.embedding.vectors.shape == theirs.embedding.vectors.shape
    # Stage 1's CLIP LoRA, frozen in stage 2, with stage 1's scale: the same CLIP states.
    assert two.model.text_lora_from_stage1
    prompt = ["a photo of a dog on the beach"]  # no concept token: stage 2 trains those
    with torch.no_grad():
        states = [
            m.text_encoder(m.tokenize(prompt)).last_hidden_state for m in (one.model, two.model)
        ]
    torch.testing.assert_close(states[1], states[0], rtol=0, atol=1e-5)
