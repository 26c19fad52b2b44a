"""DDLoss (ACCORD Eqs. 8, 11): the formula by hand, where its gradient goes, t = 0, real UNet."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import tiny_datamodule
from regularizer_fakes import FakeModule, random_texts, record_for, sd_betas

from losses.dd_loss import DenoisingDecoupleLoss
from models import CustomDiffusion

TIMESTEPS = [0, 1, 500, 999]
CONCEPT = "<v1> dog"


def captions(size: int) -> dict[str, list[str]]:
    return {
        "prompts": [f"a photo of a {CONCEPT}"] * size,
        "caption_full": [f"a {CONCEPT} on beach {i}" for i in range(size)],
        "caption_concept": [CONCEPT] * size,
        "caption_general": [f"a on beach {i}" for i in range(size)],
    }


def setup_case(seed: int = 0, same_full: bool = False):
    generator = torch.Generator().manual_seed(seed)
    batch = captions(len(TIMESTEPS))
    if same_full:
        batch["caption_full"] = list(batch["prompts"])
    prompts = set(batch["caption_full"] + batch["caption_general"] + [CONCEPT, ""])
    module = FakeModule(random_texts(sorted(prompts), generator))
    record = record_for(batch, TIMESTEPS, generator)
    return module, record, batch


def expected_dd(
    module: FakeModule, record, batch, reduction: str, reuse: bool, time_weight: str = "paper"
) -> float:
    """Eq. (11) with Eq. (8) in epsilon space, written out per sample in numpy, in the paper's
    1-based steps: t = k + 1 for scheduler index k, beta_t = betas[k], alphabar_{t-1} the
    product of the first t - 1 alphas; ``index`` weights with k / T instead of t / T."""
    betas = sd_betas()
    alphas = 1.0 - betas
    x = record.noisy_latents.numpy().astype(np.float64)

    def eps(prompt: str, i: int) -> np.ndarray:
        offset = module.texts[prompt][1].detach().numpy()[0, :4].astype(np.float64)
        return 0.5 * x[i] + offset[:, None, None]

    def norm2(a: np.ndarray) -> float:
        return float((a**2).sum() if reduction == "sum" else (a**2).mean())

    total = 0.0
    for i, k in enumerate(TIMESTEPS):
        t = k + 1
        full = record.model_pred[i].numpy() if reuse else eps(batch["caption_full"][i], i)
        d = (
            norm2(full - eps(batch["caption_concept"][i], i))
            + norm2(full - eps(batch["caption_general"][i], i))
            - norm2(full - eps("", i))
        )
        if t == 1:  # alphabar_0 = 1: zero posterior variance
            weight = 0.0
        else:
            alphabar_previous = np.prod(alphas[: t - 1])  # alphabar_{t-1}
            linear = t / 1000 if time_weight == "paper" else k / 1000
            weight = linear * betas[t - 1] / (2 * alphas[t - 1] * (1 - alphabar_previous))
        total += weight * abs(d)
    return total / len(TIMESTEPS)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("same_full", [False, True])
@pytest.mark.parametrize("time_weight", ["paper", "index"])
def test_matches_the_papers_formula(reduction: str, same_full: bool, time_weight: str) -> None:
    module, record, batch = setup_case(same_full=same_full)
    loss = DenoisingDecoupleLoss(reduction=reduction, time_weight=time_weight)(record, module)
    expected = expected_dd(module, record, batch, reduction, same_full, time_weight)
    assert expected > 0
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("stop_concept", [False, True])
def test_gradient_skips_the_general_and_empty_passes(stop_concept: bool) -> None:
    module, record, batch = setup_case(seed=1)
    loss = DenoisingDecoupleLoss(stop_concept_gradient=stop_concept)(record, module)
    loss.backward()
    size = len(TIMESTEPS)
    # Two batched UNet calls: (full, cp) with gradient, (cg, empty) without; cp joins the
    # second when its gradient is stopped too.
    if stop_concept:
        assert module.unet_calls == [
            {"size": size, "grad": True},
            {"size": 3 * size, "grad": False},
        ]
    else:
        assert module.unet_calls == [
            {"size": 2 * size, "grad": True},
            {"size": 2 * size, "grad": False},
        ]
    grad = {p: module.texts[p][1].grad for p in module.texts}
    assert all(grad[p] is not None and grad[p].abs().sum() > 0 for p in batch["caption_full"][1:])
    for prompt in [*batch["caption_general"], ""]:
        assert grad[prompt] is None, prompt
    if stop_concept:
        assert grad[CONCEPT] is None
    else:
        assert grad[CONCEPT] is not None and grad[CONCEPT].abs().sum() > 0


def test_reuses_the_denoising_pass_when_the_caption_is_the_prompt() -> None:
    module, record, batch = setup_case(same_full=True)
    record.model_pred.requires_grad_(True)
    DenoisingDecoupleLoss()(record, module).backward()
    size = len(TIMESTEPS)
    assert module.unet_calls == [{"size": size, "grad": True}, {"size": 2 * size, "grad": False}]
    assert record.model_pred.grad is not None and record.model_pred.grad.abs().sum() > 0


def papers_dd_by_hand(
    e_full: torch.Tensor,
    e_concept: torch.Tensor,
    e_general: torch.Tensor,
    e_empty: torch.Tensor,
    timesteps: list[int],
) -> torch.Tensor:
    """Eqs. (8) and (11) written out in plain torch (float64), one sample at a time: D_t from
    the squared L2 norms of whole predictions (sums over every element of a sample), the weight
    t/T times beta_t / (2 alpha_t (1 - alphabar_{t-1})) at the 1-based t = k + 1 (0 at t = 1),
    and the mean over the batch."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    alphas = 1.0 - betas
    terms = []
    for i, k in enumerate(timesteps):
        full = e_full[i].double()
        norm_concept = ((full - e_concept[i].double()) ** 2).sum()
        norm_general = ((full - e_general[i].double()) ** 2).sum()
        norm_empty = ((full - e_empty[i].double()) ** 2).sum()
        t = k + 1
        if t == 1:
            weight = torch.zeros((), dtype=torch.float64)
        else:
            alphabar_previous = torch.prod(alphas[: t - 1])
            weight = (t / 1000) * betas[t - 1] / (2 * alphas[t - 1] * (1 - alphabar_previous))
        terms.append(weight * (norm_concept + norm_general - norm_empty).abs())
    return torch.stack(terms).mean()


def test_the_default_is_the_papers_squared_norm() -> None:
    """Issue 22 (4): with no options, DDLoss is Eq. (11) with Eq. (8)'s squared L2 norms of
    whole predictions, computed independently here; the element mean it used to default to is
    h * w * C times smaller and fails this."""
    module, record, batch = setup_case(seed=3)
    size = len(TIMESTEPS)
    states = module.encode_text(
        batch["caption_full"] + batch["caption_concept"] + batch["caption_general"] + [""] * size
    ).hidden_states
    latents = record.noisy_latents.repeat(4, 1, 1, 1)
    with torch.no_grad():
        predictions = module.predict_noise(latents, record.timesteps.repeat(4), states)
    want = papers_dd_by_hand(*predictions.chunk(4), TIMESTEPS)
    loss = DenoisingDecoupleLoss()(record, module)
    assert float(want) > 0
    assert float(loss.detach()) == pytest.approx(float(want), rel=1e-5)
    elements = record.noisy_latents[0].numel()
    mean = DenoisingDecoupleLoss(reduction="mean")(record, module)
    assert float(mean.detach()) == pytest.approx(float(want) / elements, rel=1e-5)


def test_defaults_are_the_papers_norm_and_t() -> None:
    loss = DenoisingDecoupleLoss()
    assert (loss.weight, loss.reduction, loss.time_weight) == (0.2, "sum", "paper")
    # At index k = 1 the weight is 2 / T, not 1 / T: the linear weight and the posterior factor
    # read the same t.
    module, record, batch = setup_case()
    record.timesteps = torch.ones(len(TIMESTEPS), dtype=torch.long)
    paper = float(DenoisingDecoupleLoss()(record, module))
    index = float(DenoisingDecoupleLoss(time_weight="index")(record, module))
    assert paper == pytest.approx(2 * index, rel=1e-5)


def test_t_zero_is_guarded() -> None:
    module, record, batch = setup_case()
    record.timesteps = torch.zeros(len(TIMESTEPS), dtype=torch.long)
    loss = DenoisingDecoupleLoss()(record, module)
    loss.backward()
    assert float(loss) == 0.0
    grads = [module.texts[p][1].grad for p in batch["caption_full"]]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_on_the_tiny_unet_the_stopped_passes_carry_no_graph() -> None:
    datamodule = tiny_datamodule()
    datamodule.request(DenoisingDecoupleLoss.requires, "test")
    module = CustomDiffusion(concepts=datamodule.concepts)
    batch = next(iter(datamodule.train_dataloader()))
    batch["caption_full"] = [f"{c}, on a beach" for c in batch["caption_full"]]  # not the prompt
    calls = []
    original = module.predict_noise

    def recording(latents, timesteps, states, time_ids=None):
        out = original(latents, timesteps, states, time_ids)
        calls.append((latents.shape[0], out.requires_grad))
        return out

    module.predict_noise = recording
    record = module.denoise(batch, module.sample_draws(batch, 0))
    record.timesteps = torch.tensor([400, 900])  # nonzero weights
    DenoisingDecoupleLoss()(record, module).backward()
    assert calls == [(2, True), (4, True), (4, False)]  # denoise, (full, cp), (cg, empty)
    vectors = module.concept_tokens.embedding.vectors
    assert vectors.grad is not None and vectors.grad.abs().sum() > 0
    kv = module.trainable_groups()["kv"]
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in kv)
