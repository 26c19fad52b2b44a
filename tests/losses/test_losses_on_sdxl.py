"""DDLoss, SuDe, PDLoss, SPL and CLIF's InfoNCE on SDXL: each paper's formula recomputed from
diffusers' own SDXL conditioning.

On SDXL the DDPM posterior is SD's (the same scaled-linear epsilon schedule); what differs is how
each extra UNet call is conditioned: both encoders' states, the pooled text embedding and the
step's size ids. So the expected values below take each condition's noise prediction from
diffusers' ``encode_prompt`` and ``_get_add_time_ids`` with a direct UNet call, and DDLoss's
Eq. (11) written out in numpy with the paper's 1-based t.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionXLPipeline

from core.concept import ConceptSpec
from losses.clif import ContrastiveLanguageImageLoss, symmetric_info_nce
from losses.dd_loss import DenoisingDecoupleLoss, run_conditions
from losses.pd_loss import PriorDecoupleLoss
from losses.spl import SemanticPreservationLoss
from losses.sude import SubjectDerivedLoss
from models import TextualInversion, load_export
from models.exports_loading import export_with_manifest

BATCH = {
    "pixel_values": torch.linspace(-1, 1, 2 * 3 * 32 * 32).reshape(2, 3, 32, 32),
    "prompts": ["a photo of a <v1> toy"] * 2,
    "caption_full": ["a <v1> toy on a wooden bench", "two <v1> toy in the snow"],
    "caption_concept": ["<v1> toy"] * 2,
    "caption_general": ["a on a wooden bench", "two in the snow"],
    "superclass_prompts": ["a photo of a toy"] * 2,
    "caption_superclass": ["toy", "toy"],
    "original_size": torch.tensor([[48, 64], [32, 32]]),
    "crop_top_left": torch.tensor([[0, 8], [0, 0]]),
    "sample_key": [3, 11],
}


@pytest.fixture(scope="module")
def setting(tiny_sdxl_path: Path, tmp_path_factory: pytest.TempPathFactory):
    module = TextualInversion(
        pretrained_model_name_or_path="tiny-sdxl", concepts=[ConceptSpec("<v1>", "toy")]
    )
    with torch.no_grad():  # vectors far from their initializer, so <v1> matters
        for tokens in module.encoder_concept_tokens:
            tokens.embedding.vectors.normal_(generator=torch.Generator().manual_seed(1))
    folder = tmp_path_factory.mktemp("export")
    export_with_manifest(module, folder)
    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl_path)
    load_export(pipe, folder)
    record = module.denoise(BATCH, module.sample_draws(BATCH, 0))
    return module, pipe, record


def diffusers_eps(pipe: StableDiffusionXLPipeline, record, prompts: list[str]) -> torch.Tensor:
    """eps(x_t, c, t) for each sample's prompt, conditioned as diffusers' SDXL pipeline does."""
    states, _, pooled, _ = pipe.encode_prompt(
        prompts, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=False
    )
    projection = pipe.text_encoder_2.config.projection_dim
    rows = zip(BATCH["original_size"].tolist(), BATCH["crop_top_left"].tolist())
    time_ids = torch.cat([
        pipe._get_add_time_ids(tuple(size), tuple(crop), (32, 32), torch.float32, projection)
        for size, crop in rows
    ])  # fmt: skip
    added = {"text_embeds": pooled, "time_ids": time_ids}
    with torch.no_grad():
        return pipe.unet(
            record.noisy_latents,
            record.timesteps,
            encoder_hidden_states=states,
            added_cond_kwargs=added,
        ).sample


def test_dd_loss_is_eq_11_with_diffusers_sdxl_predictions(setting) -> None:
    module, pipe, record = setting
    loss = DenoisingDecoupleLoss(reduction="sum")
    loss.prepare(module)
    with torch.no_grad():
        ours = loss(record, module).item()
    eps = {key: diffusers_eps(pipe, record, [*BATCH[key]]).double().numpy()
           for key in ("caption_full", "caption_concept", "caption_general")}  # fmt: skip
    eps["empty"] = diffusers_eps(pipe, record, ["", ""]).double().numpy()
    config = module.noise_scheduler.config  # scaled-linear betas, SDXL's published schedule
    betas = np.linspace(config.beta_start**0.5, config.beta_end**0.5, 1000, dtype=np.float64) ** 2
    alphas = 1.0 - betas
    total = 0.0
    for i, k in enumerate(record.timesteps.tolist()):
        t = k + 1
        full = eps["caption_full"][i]
        d = (
            ((full - eps["caption_concept"][i]) ** 2).sum()
            + ((full - eps["caption_general"][i]) ** 2).sum()
            - ((full - eps["empty"][i]) ** 2).sum()
        )
        weight = (
            0.0
            if t == 1
            else t / 1000 * betas[t - 1] / (2 * alphas[t - 1] * (1 - np.prod(alphas[: t - 1])))
        )
        total += weight * abs(d)
    expected = total / 2
    assert expected > 0
    assert ours == pytest.approx(expected, rel=1e-4)


def test_sude_conditions_its_superclass_and_empty_passes_as_diffusers_does(setting) -> None:
    module, pipe, record = setting
    loss = SubjectDerivedLoss()
    loss.prepare(module)
    with torch.no_grad():
        text = loss.cache.encode(module, [*BATCH["superclass_prompts"], "", ""])
        e_class, e_empty = run_conditions(module, record, text)
        value = loss(record, module)
    torch.testing.assert_close(
        e_class, diffusers_eps(pipe, record, [*BATCH["superclass_prompts"]]), rtol=0, atol=1e-5
    )
    torch.testing.assert_close(e_empty, diffusers_eps(pipe, record, ["", ""]), rtol=0, atol=1e-5)
    assert torch.isfinite(value)


def diffusers_text(pipe: StableDiffusionXLPipeline, prompts: list[str]) -> tuple[torch.Tensor, ...]:
    """(states, pooled) of prompts as diffusers' SDXL pipeline encodes them."""
    states, _, pooled, _ = pipe.encode_prompt(
        prompts, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=False
    )
    return states, pooled


def test_pd_loss_is_eq_14_on_sdxls_pooled_text(setting) -> None:
    module, pipe, record = setting
    loss = PriorDecoupleLoss()
    loss.prepare(module)
    requests = {id(loss): loss.text_requests(BATCH, module)}
    step = module.denoise(BATCH, module.sample_draws(BATCH, 0), text_requests=requests)
    with torch.no_grad():
        ours = loss(step, module).item()
    _, f_p = diffusers_text(pipe, [*BATCH["caption_concept"]])
    _, f_g = diffusers_text(pipe, [*BATCH["caption_general"]])
    _, f_s = diffusers_text(pipe, ["toy", "toy"])
    cos = torch.nn.functional.cosine_similarity
    expected = (cos(f_p, f_g, dim=-1) - cos(f_s, f_g, dim=-1)).abs().mean().item()
    assert expected > 0
    assert ours == pytest.approx(expected, rel=1e-4, abs=1e-6)
    with pytest.raises(ValueError, match="leave clip_model unset, or set text_feature: clip"):
        PriorDecoupleLoss(clip_model="tiny-clip").prepare(module)


def clip_l_features(pipe: StableDiffusionXLPipeline, texts: list[str]) -> torch.Tensor:
    """CLIP ViT-L's text features of SDXL's first encoder: its last-layer end-of-text state
    through CLIP's text projection (tiny-clip's for the tiny pipeline)."""
    from transformers import CLIPTextModelWithProjection

    from pretrained.resolve import resolve_pretrained

    ids = pipe.tokenizer(texts, padding="max_length", max_length=77, return_tensors="pt").input_ids
    last = pipe.text_encoder(ids).last_hidden_state
    ends = (ids == pipe.tokenizer.eos_token_id).int().argmax(-1)
    clip = CLIPTextModelWithProjection.from_pretrained(resolve_pretrained("tiny-clip"))
    return clip.text_projection(last[torch.arange(len(texts)), ends])


def test_pd_loss_on_sdxl_can_use_the_first_encoders_clip_features(setting) -> None:
    module, pipe, _ = setting
    loss = PriorDecoupleLoss(text_feature="clip")
    loss.prepare(module)
    requests = {id(loss): loss.text_requests(BATCH, module)}
    step = module.denoise(BATCH, module.sample_draws(BATCH, 0), text_requests=requests)
    with torch.no_grad():
        ours = loss(step, module).item()
        f_p = clip_l_features(pipe, [*BATCH["caption_concept"]])
        f_g = clip_l_features(pipe, [*BATCH["caption_general"]])
        f_s = clip_l_features(pipe, ["toy", "toy"])
    cos = torch.nn.functional.cosine_similarity
    expected = (cos(f_p, f_g, dim=-1) - cos(f_s, f_g, dim=-1)).abs().mean().item()
    assert ours == pytest.approx(expected, rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("project", [False, True])
def test_spl_on_sdxl_reads_what_the_unet_reads(setting, project: bool) -> None:
    module, pipe, record = setting
    loss = SemanticPreservationLoss(project=project)
    loss.prepare(module)
    with torch.no_grad():
        ours = loss(record, module).item()
    states, pooled = diffusers_text(pipe, [*BATCH["prompts"]])
    class_states, class_pooled = diffusers_text(pipe, [*BATCH["superclass_prompts"]])
    if project:
        concept, superclass = pooled, class_pooled
    else:  # the concatenated states at each prompt's end-of-text
        eos = pipe.tokenizer.eos_token_id
        ids = pipe.tokenizer([*BATCH["prompts"]], padding="max_length", max_length=77,
                             return_tensors="pt").input_ids  # fmt: skip
        class_ids = pipe.tokenizer([*BATCH["superclass_prompts"]], padding="max_length",
                                   max_length=77, return_tensors="pt").input_ids  # fmt: skip
        rows = torch.arange(2)
        concept = states[rows, (ids == eos).int().argmax(-1)]
        superclass = class_states[rows, (class_ids == eos).int().argmax(-1)]
    expected = (1 - torch.nn.functional.cosine_similarity(concept, superclass, dim=-1)).mean()
    assert ours == pytest.approx(expected.item(), rel=1e-4, abs=1e-6)


def test_spl_on_sdxl_can_project_the_first_encoders_clip_features(setting) -> None:
    # text_feature: clip, as PDLoss: CLIP ViT-L's projection of encoder 1's last-layer
    # end-of-text state of the prompt and of its superclass prompt.
    module, pipe, record = setting
    loss = SemanticPreservationLoss(project=True, text_feature="clip")
    loss.prepare(module)
    with torch.no_grad():
        ours = loss(record, module).item()
        concept = clip_l_features(pipe, [*BATCH["prompts"]])
        superclass = clip_l_features(pipe, [*BATCH["superclass_prompts"]])
    expected = (1 - torch.nn.functional.cosine_similarity(concept, superclass, dim=-1)).mean()
    assert ours == pytest.approx(expected.item(), rel=1e-4, abs=1e-6)
    with pytest.raises(ValueError, match="set project: true"):
        SemanticPreservationLoss(text_feature="clip")
    with pytest.raises(ValueError, match="set pool: eos"):
        SemanticPreservationLoss(project=True, text_feature="clip", pool="concept").prepare(module)


def test_clif_info_nce_on_sdxl_reads_clip_l_at_its_last_layer(setting) -> None:
    """CLIF's official SDXL code: the text side is SDXL's first encoder (CLIP ViT-L), its
    last-layer end-of-text state through CLIP's text projection (not the UNet's penultimate
    states); the InfoNCE itself is tested against Eq. (5) in test_clif_loss.py."""
    module, pipe, _ = setting
    loss = ContrastiveLanguageImageLoss()
    loss.prepare(module)
    prompts = ["a photo of a <v1> toy", "a red toy on the beach"]
    pixels = torch.linspace(-1, 1, 2 * 3 * 32 * 32).reshape(2, 3, 32, 32).flip(0)
    batch = {**BATCH, "clif_prompts": prompts, "clif_pixel_values": pixels}
    step = module.denoise(
        batch,
        module.sample_draws(batch, 0),
        text_requests={id(loss): loss.text_requests(batch, module)},
    )
    with torch.no_grad():
        ours = loss(step, module).item()
        text = clip_l_features(pipe, prompts)
        image = loss.image_tower(module)(pixels)
        expected = symmetric_info_nce(text, image, loss.scale(module)).item()
    assert ours == pytest.approx(expected, rel=1e-4)
