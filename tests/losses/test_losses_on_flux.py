"""DDLoss and SuDe on flow matching (FLUX), tested against the derivation written in
docs/DESIGN.md ("The papers' losses on flow matching"), computed here independently: the
Gaussian posterior of x_r given x_s and x0 from the marginals N((1 - s) x0, s^2), the velocity
space weight (s - r)(s + r - 2 s r) / (2 r^2) with r the training grid's next level, and the
velocities from diffusers' FluxPipeline conditioning with a direct transformer call. On DDPM the
same general weight reduces to the existing beta_t / (2 alpha_t (1 - alphabar_{t-1})).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler, FluxPipeline

from core.concept import ConceptSpec
from losses.dd_loss import DenoisingDecoupleLoss
from losses.epsilon_space import posterior_terms, posterior_weight
from losses.flow_space import flow_posterior_terms, prediction_space_weight
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
    "sample_key": [3, 11],
}


def grid(scheduler_config: dict) -> list[float]:
    """The training grid's noise levels, descending, as the FLUX scripts index them."""
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(scheduler_config)
    return [float(t) / 1000 for t in scheduler.timesteps]


def written_weight(s: float, r: float) -> float:
    """docs/DESIGN.md: (s - r)(s + r - 2 s r) / (2 r^2); 0 at r = 0."""
    return 0.0 if r == 0 else (s - r) * (s + r - 2 * s * r) / (2 * r * r)


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_the_flow_posterior_is_the_gaussian_one_and_its_weight_the_written_form(
    shift: float,
) -> None:
    config = dict(FlowMatchEulerDiscreteScheduler(shift=shift).config)
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(config)
    levels = grid(config)
    picks = [0, 1, 400, 998, 999]
    timesteps = torch.tensor([levels[i] * 1000 for i in picks])
    terms = flow_posterior_terms(scheduler, timesteps)
    for row, i in enumerate(picks):
        s, r = levels[i], (levels[i + 1] if i + 1 < len(levels) else 0.0)
        # Marginal consistency: x_s ~ N((1-s) x0, s^2), then x_r ~ posterior, gives
        # x_r ~ N((1-r) x0, r^2): mean coef1 + coef2 (1 - s) = 1 - r, variance coef2^2 s^2 +
        # variance = r^2.
        c1, c2, var = (float(terms.coef1[row]), float(terms.coef2[row]),
                       float(terms.variance[row]))  # fmt: skip
        assert c1 + c2 * (1 - s) == pytest.approx(1 - r, abs=1e-6)
        assert c2 * c2 * s * s + var == pytest.approx(r * r, abs=1e-6)
        weight = float(prediction_space_weight(terms)[row])
        assert weight == pytest.approx(written_weight(s, r), rel=1e-4, abs=1e-9)


def test_on_ddpm_the_general_weight_is_the_existing_one() -> None:
    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    timesteps = torch.tensor([0, 1, 10, 500, 999])
    general = prediction_space_weight(posterior_terms(scheduler, timesteps))
    torch.testing.assert_close(general, posterior_weight(scheduler, timesteps), rtol=1e-5, atol=0)


@pytest.fixture(scope="module")
def setting(tiny_flux_path: Path, tmp_path_factory: pytest.TempPathFactory):
    module = TextualInversion(
        pretrained_model_name_or_path="tiny-flux", concepts=[ConceptSpec("<v1>", "toy")]
    )
    with torch.no_grad():  # vectors far from their initializer, so <v1> matters
        for tokens in module.encoder_concept_tokens:
            tokens.embedding.vectors.normal_(generator=torch.Generator().manual_seed(1))
    folder = tmp_path_factory.mktemp("export")
    export_with_manifest(module, folder)
    pipe = FluxPipeline.from_pretrained(tiny_flux_path)
    load_export(pipe, folder)
    record = module.denoise(BATCH, module.sample_draws(BATCH, 0))
    return module, pipe, record


def diffusers_velocity(pipe: FluxPipeline, record, prompts: list[str]) -> torch.Tensor:
    """v(x_s, c, s) for each sample's prompt, conditioned as diffusers' FluxPipeline does."""
    length = pipe.tokenizer_2.model_max_length
    states, pooled, text_ids = pipe.encode_prompt(prompts, prompts, max_sequence_length=length)
    batch, channels, height, width = record.noisy_latents.shape
    with torch.no_grad():
        out = pipe.transformer(
            hidden_states=FluxPipeline._pack_latents(
                record.noisy_latents, batch, channels, height, width
            ),
            timestep=record.timesteps / 1000,
            guidance=torch.full((batch,), 3.5),
            pooled_projections=pooled,
            encoder_hidden_states=states,
            txt_ids=text_ids,
            img_ids=FluxPipeline._prepare_latent_image_ids(
                batch, height // 2, width // 2, "cpu", torch.float32
            ),
            return_dict=False,
        )[0]
    return FluxPipeline._unpack_latents(out, height * 8, width * 8, 8)


def levels_of(module, record) -> list[tuple[float, float]]:
    levels = grid(dict(module.noise_scheduler.config))
    pairs = []
    for t in record.timesteps.tolist():
        i = int(np.argmin([abs(level * 1000 - t) for level in levels]))
        pairs.append((levels[i], levels[i + 1] if i + 1 < len(levels) else 0.0))
    return pairs


@pytest.mark.smoke  # on the newest versions setup.cfg allows too
def test_dd_loss_is_the_written_flow_form(setting) -> None:
    module, pipe, record = setting
    loss = DenoisingDecoupleLoss(weight=0.2)
    ours = loss(record, module)
    v = {key: diffusers_velocity(pipe, record, list(BATCH[key]))
         for key in ("caption_full", "caption_concept", "caption_general")}  # fmt: skip
    v["empty"] = diffusers_velocity(pipe, record, ["", ""])
    expected = []
    for i, (s, r) in enumerate(levels_of(module, record)):
        def norm2(a: torch.Tensor, b: torch.Tensor, row: int = i) -> float:
            return float(((a[row] - b[row]).double() ** 2).sum())

        full = v["caption_full"]
        distance = (norm2(full, v["caption_concept"]) + norm2(full, v["caption_general"])
                    - norm2(full, v["empty"]))  # fmt: skip
        expected.append(s * written_weight(s, r) * abs(distance))
    assert float(ours) == pytest.approx(float(np.mean(expected)), rel=2e-4)


@pytest.mark.smoke  # on the newest versions setup.cfg allows too
def test_sude_is_its_formula_on_flow_posterior_means(setting) -> None:
    module, pipe, record = setting
    loss = SubjectDerivedLoss(weight=0.4, truncation="none", clamp_x0=False)
    ours = loss(record, module)
    v_subject = diffusers_velocity(pipe, record, list(BATCH["prompts"]))
    v_class = diffusers_velocity(pipe, record, list(BATCH["superclass_prompts"]))
    v_empty = diffusers_velocity(pipe, record, ["", ""])
    x_s = record.noisy_latents.double()
    expected = []
    for i, (s, r) in enumerate(levels_of(module, record)):
        # Posterior of x_r given x_s and x0, written from the marginals (not from our code).
        a_sr = (1 - s) / (1 - r)
        v_sr = s * s - a_sr * a_sr * r * r
        coef1, coef2, var = (1 - r) * v_sr / (s * s), a_sr * r * r / (s * s), v_sr * r * r / (s * s)

        mu_sub, mu_cls, mu_0 = (
            coef1 * (x_s[i] - s * v[i].double()) + coef2 * x_s[i]  # x0 = x_s - s v
            for v in (v_subject, v_class, v_empty)
        )
        value = (((mu_sub - mu_cls) ** 2).mean() - ((mu_sub - mu_0) ** 2).mean()) / (2 * var + 1e-6)
        expected.append(float(value) / coef1)
    assert float(ours) == pytest.approx(float(np.mean(expected)), rel=2e-3)


def clip_last_layer(pipe: FluxPipeline, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(last-layer states, ids) of FLUX's CLIP ViT-L, as diffusers' pipeline tokenizes."""
    ids = pipe.tokenizer(texts, padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        return pipe.text_encoder(ids).last_hidden_state, ids


def clip_l_features(pipe: FluxPipeline, texts: list[str]) -> torch.Tensor:
    """CLIP ViT-L's text features: the last-layer end-of-text state through CLIP's projection
    (tiny-clip's for the tiny pipeline)."""
    from transformers import CLIPTextModelWithProjection

    from pretrained.resolve import resolve_pretrained

    last, ids = clip_last_layer(pipe, texts)
    ends = (ids == pipe.tokenizer.eos_token_id).int().argmax(-1)
    clip = CLIPTextModelWithProjection.from_pretrained(resolve_pretrained("tiny-clip"))
    with torch.no_grad():
        return clip.text_projection(last[torch.arange(len(texts)), ends])


def test_pd_loss_is_eq_14_on_clip_l_features(setting) -> None:
    """FLUX's pooled text is CLIP ViT-L's unprojected output, so PDLoss takes CLIP's
    projection of CLIP ViT-L's end-of-text state, as on SD 1.x."""
    module, pipe, _ = setting
    loss = PriorDecoupleLoss()
    loss.prepare(module)
    requests = {id(loss): loss.text_requests(BATCH, module)}
    step = module.denoise(BATCH, module.sample_draws(BATCH, 0), text_requests=requests)
    with torch.no_grad():
        ours = loss(step, module).item()
    f_p = clip_l_features(pipe, [*BATCH["caption_concept"]])
    f_g = clip_l_features(pipe, [*BATCH["caption_general"]])
    f_s = clip_l_features(pipe, [*BATCH["caption_superclass"]])
    cos = torch.nn.functional.cosine_similarity
    expected = (cos(f_p, f_g, dim=-1) - cos(f_s, f_g, dim=-1)).abs().mean().item()
    assert expected > 0
    assert ours == pytest.approx(expected, rel=1e-4, abs=1e-6)


@pytest.mark.parametrize(("project", "pool"), [(False, "eos"), (False, "concept"), (True, "eos")])
def test_spl_reads_clip_l(setting, project: bool, pool: str) -> None:
    """Unprojected: CLIP ViT-L's last-layer state at the prompt's end-of-text (or the concept
    token) against the superclass prompt's end-of-text state (T5's states are over other
    tokens); projected: both end-of-text features through CLIP's projection."""
    module, pipe, record = setting
    loss = SemanticPreservationLoss(project=project, pool=pool)
    loss.prepare(module)
    with torch.no_grad():
        ours = loss(record, module).item()
    if project:
        concept = clip_l_features(pipe, [*BATCH["prompts"]])
        superclass = clip_l_features(pipe, [*BATCH["superclass_prompts"]])
    else:
        states, ids = clip_last_layer(pipe, [*BATCH["prompts"]])
        token = "<v1>" if pool == "concept" else pipe.tokenizer.eos_token
        at = (ids == pipe.tokenizer.convert_tokens_to_ids(token)).int().argmax(-1)
        concept = states[torch.arange(2), at]
        class_states, class_ids = clip_last_layer(pipe, [*BATCH["superclass_prompts"]])
        ends = (class_ids == pipe.tokenizer.eos_token_id).int().argmax(-1)
        superclass = class_states[torch.arange(2), ends]
    cos = torch.nn.functional.cosine_similarity(concept, superclass, dim=-1)
    assert ours == pytest.approx((1 - cos).mean().item(), rel=1e-4, abs=1e-6)
