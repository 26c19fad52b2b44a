"""ACCORD's Denoising Decouple Loss (DDLoss), ``dd``: Eqs. (8) and (11) of the paper.

    L_dd = mean over the batch of  w_t | ||e(cp,cg) - e(cp)||^2 + ||e(cp,cg) - sg e(cg)||^2
                                         - ||e(cp,cg) - sg e(empty)||^2 |
    w_t  = (t / T) beta_t / (2 alpha_t (1 - alphabar_{t-1})),   w_1 = 0

t is the paper's 1-based step (t = k + 1 for the scheduler's index k = 0..T-1): the same t in
the linear weight and in the posterior factor, whose t = 1 (k = 0) has zero variance and is
guarded (``time_weight: index`` keeps the earlier k / T).

e(c) = eps_theta(x_t, c, t) on the step's own noisy latents and timesteps (the paper's x_t
stand-in for x_theta,t); (cp, cg) is the full caption, cp the concept phrase, cg the caption
without it, empty the empty prompt; sg = stop-gradient, as in the paper (following SuDe) so the
model's prior for cg and the unconditional branch is not damaged. The weight is the paper's
linear t/T times 1/(2 sigma_t^2) written in epsilon space (see ``losses/epsilon_space.py``),
which is also where t = 1 is guarded. ``stop_concept_gradient`` stops the cp pass too.

Scale: the paper's ||.||^2 is the squared L2 norm of the Gaussian derivation (Eq. 8, from
Eq. 9's log density), a sum over each sample's latent elements; Eq. (11) sums the weighted
terms over steps, which the training step's timestep sampling turns into a mean over the batch.
So ``reduction: sum`` is the default: per-sample sums, then the batch mean. The paper's weights
(0.1 to 0.3) are for this norm. ``mean`` divides each distance by the element count h * w * C
(1,024 at the tiny model's 16x16x4 latents, 16,384 at SD 1.5's 64x64x4): at the paper's weights
that loss is effectively off, and needs its weight scaled up by the element count to mean the
same. Measured with ``scripts/dd_gradient_share.py`` (Custom Diffusion, weight 0.2, the norm of
DD's gradient over the denoising loss's): ``sum`` 0.06 to 0.5 on the tiny model at 32 px and
0.7 to 4.6 at SD 1.5's shapes with random weights (``sd15-random``); ``mean`` 6e-5 to 5e-4 and
4e-5 to 3e-4.

Cost: the extra conditions run as two batched UNet calls, one with gradient (full and cp) and
one without (cg and empty; cp too when stopped). When the full caption is the step's own prompt
(the template fallback), the denoising pass already computed e(cp, cg) with its gradient, and
it is reused instead of run again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import torch

from losses.base import Regularizer
from losses.epsilon_space import (
    Reduction,
    check_epsilon_prediction,
    posterior_weight,
    squared_distance,
)
from losses.flow_space import flow_posterior_terms, is_flow_matching, prediction_space_weight
from losses.prompt_cache import FrozenPromptCache, possible_texts
from step.encoding import TextEncoding
from step.record import StepRecord

if TYPE_CHECKING:
    from losses.model_view import ModelView

TimeWeight = Literal["paper", "index"]


def run_conditions(
    module: ModelView, record: StepRecord, text: TextEncoding
) -> list[torch.Tensor]:
    """One UNet call on the step's x_t and t (and size ids: SDXL) for k stacked conditions;
    k predictions back."""
    states = text.conditioning
    count = states.shape[0] // record.noisy_latents.shape[0]
    latents = record.noisy_latents.repeat(count, 1, 1, 1)
    timesteps = record.timesteps.repeat(count)
    if text.text_embeds is None:  # SD 1.x: no size ids (the encoding itself goes, so a
        # baseline whose states follow the timestep, NeTI, re-encodes its prompts)
        return list(module.predict_noise(latents, timesteps, text).chunk(count))
    time_ids = None if record.time_ids is None else record.time_ids.repeat(count, 1)
    return list(module.predict_noise(latents, timesteps, text, time_ids).chunk(count))


class DenoisingDecoupleLoss(Regularizer):
    """Weighted |sum of the three squared distances| between conditional noise predictions."""

    name = "dd"
    requires = frozenset({"caption_full", "caption_concept", "caption_general"})
    # SDXL trains with the same DDPM epsilon schedule: the posterior is the same, only the
    # conditioning of its extra UNet calls differs (pooled text, size ids: run_conditions).
    # FLUX: the flow-matching posterior and velocity-space weight (losses/flow_space.py).
    families = frozenset({"sd1", "sdxl", "flux"})

    def __init__(
        self,
        weight: float = 0.2,
        stop_concept_gradient: bool = False,
        reduction: Reduction = "sum",
        time_weight: TimeWeight = "paper",
    ) -> None:
        """
        Args:
            weight: ACCORD uses 0.1 to 0.3 (Appendix A.4).
            stop_concept_gradient: also stop the gradient of the cp pass (the paper stops cg
                and empty only).
            reduction: ``sum`` over each sample's latent elements, the paper's squared norm
                (the scale its weights are for), then the mean over the batch; or ``mean``
                over the elements (h * w * C times smaller: scale the weight up to match).
            time_weight: ``paper``: (k + 1) / T for scheduler index k, the paper's 1-based t
                (the posterior factor's own t); ``index``: k / T.
        """
        super().__init__(weight)
        if reduction not in ("sum", "mean"):
            raise ValueError(f"DDLoss reduction must be 'sum' or 'mean', got {reduction!r}.")
        self.stop_concept_gradient = stop_concept_gradient
        if time_weight not in ("paper", "index"):
            raise ValueError(f"DDLoss time_weight must be 'paper' or 'index', got {time_weight!r}.")
        self.reduction: Reduction = reduction
        self.time_weight: TimeWeight = time_weight
        self.cache = FrozenPromptCache()

    def prepare(self, module: ModelView) -> None:
        if not is_flow_matching(module):
            check_epsilon_prediction(module.noise_scheduler, "DDLoss")
        elif self.time_weight != "paper":
            raise ValueError(
                "DDLoss time_weight: index is DDPM's 0-based step; flow matching's time weight "
                "is the noise level s itself: leave time_weight at paper on FLUX."
            )

    def prefill(self, module: ModelView, datamodule: Any) -> None:
        """Encode every c_g the DataModule can give and the empty prompt, once."""
        self.cache.prefill(module, possible_texts(datamodule, ["caption_general"], also=("",)))

    def predictions(
        self, record: StepRecord, module: ModelView
    ) -> tuple[torch.Tensor, ...]:
        """e(cp, cg), e(cp), e(cg), e(empty), each (B, C, h, w)."""
        batch = record.batch
        full, concept = list(batch["caption_full"]), list(batch["caption_concept"])
        general, empty = list(batch["caption_general"]), [""] * len(full)
        reuse_full = full == list(batch["prompts"])
        with_grad = ([] if reuse_full else full) + ([] if self.stop_concept_gradient else concept)
        outputs: list[torch.Tensor] = []
        if with_grad:
            outputs += run_conditions(module, record, module.encode_text(with_grad))
        with torch.no_grad():
            text = self.cache.encode(module, general + empty)
            if self.stop_concept_gradient:
                text = TextEncoding.stacked([module.encode_text(concept), text])
            stopped = run_conditions(module, record, text)
        if reuse_full:
            outputs.insert(0, record.model_pred)
        return (*outputs, *stopped)

    def forward(self, record: StepRecord, module: ModelView) -> torch.Tensor:
        return self.from_predictions(self.predictions(record, module), record, module)

    def from_predictions(
        self,
        predictions: tuple[torch.Tensor, ...],
        record: StepRecord,
        module: ModelView,
    ) -> torch.Tensor:
        """Eq. (11) from ``predictions``' four noise predictions (so several reductions can
        share one set of UNet calls, as ``scripts/dd_gradient_share.py`` does)."""
        e_full, e_concept, e_general, e_empty = predictions
        distance = (
            squared_distance(e_full, e_concept, self.reduction)
            + squared_distance(e_full, e_general, self.reduction)
            - squared_distance(e_full, e_empty, self.reduction)
        )
        steps = module.noise_scheduler.config.num_train_timesteps
        if is_flow_matching(module):  # s = t / N, and the velocity-space posterior factor
            terms = flow_posterior_terms(module.noise_scheduler, record.timesteps)
            weight = record.timesteps.float() / steps * prediction_space_weight(terms)
            return (weight * distance.abs()).mean()
        step = record.timesteps.float() + (1.0 if self.time_weight == "paper" else 0.0)
        weight = step / steps
        weight = weight * posterior_weight(module.noise_scheduler, record.timesteps)
        return (weight * distance.abs()).mean()
