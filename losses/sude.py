"""Facechain-SuDe's subject-derived regularization, ``sude`` (ACCORD's comparison).

SuDe (Qiao et al., CVPR 2024) makes the subject a derived class of its superclass: the image
denoised under the subject prompt c_sub ("a photo of a <v1> dog") should still be classified
as the superclass c_cls ("a photo of a dog"), with the diffusion model as the implicit
classifier. Bayes on one reverse step gives -log p(c_cls | x_{t-1}) up to a constant as

    l = [ mean (mu_sub - mu_cls)^2 - mean (mu_sub - mu_0)^2 ] / (2 sigma_t^2 + 1e-6)

computed, as the authors' code does (``p_losses`` / ``prob_loss_func_class`` of their
ldm ``ddpm.py``), on posterior means mu = coef1[t] x_0 + coef2[t] x_t of one x_t per sample:
mu_sub from the step's own prediction (with gradient, x_0 unclamped), mu_cls and mu_0 from the
superclass and unconditional ("") passes without gradient, their x_0 clamped to [-1, 1];
sigma_t^2 is the posterior variance; the means run over each sample's latent elements (the
authors' ``.mean(dim=[1, 2, 3])``), so l is one value per sample. The loss is truncated against
what the superclass itself scores, with the authors' superclass estimate from the *unclamped*
x_0, mu_cls~, in the subject's slot:

    l_ref = [ mean (mu_cls~ - mu_cls)^2 - mean (mu_cls~ - mu_0)^2 ] / (2 sigma_t^2 + 1e-6)

(without the clamp mu_cls~ = mu_cls and l_ref = -mean (mu_cls - mu_0)^2 / (2 sigma_t^2 + 1e-6)),
and rescaled by 1 / coef1[t]. Each sample is kept or dropped on its own, then the batch mean:

    L_sude = mean over the batch of  1[l > l_ref] * l / coef1[t]

(the authors train at batch 1, where this is their loss; at larger batches a sample's decision
does not depend on the others').

Their recipe (``configs/sude/dreambooth.yaml``): weight 0.4 on DreamBooth with prior
preservation 2.0, lr 1e-6, batch 1, 800 steps. Options keep the earlier choices: truncation
at ``zero`` (l > 0) or ``none``, no clamp, no 1/coef1, and a per-sample ``sum`` over latent
elements instead of the mean (with all three off, l is the epsilon-space form
beta_t / (2 alpha_t (1 - alphabar_{t-1})) [||e_sub - e_cls||^2 - ||e_sub - e_0||^2]).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import torch

from losses.base import Regularizer
from losses.dd_loss import run_conditions
from losses.epsilon_space import Reduction, check_epsilon_prediction, posterior_mean
from losses.flow_space import is_flow_matching, step_posterior
from losses.prompt_cache import FrozenPromptCache, possible_texts
from step.record import StepRecord

if TYPE_CHECKING:
    from losses.model_view import ModelView

Truncation = Literal["reference", "zero", "none"]
VARIANCE_FLOOR = 1e-6  # the authors' guard: sigma_t^2 = 0 at t = 0


class SubjectDerivedLoss(Regularizer):
    """-log p(superclass | denoised under the subject prompt), truncated; see the module doc."""

    name = "sude"
    requires = frozenset({"superclass_prompts"})
    # SDXL trains with the same DDPM epsilon schedule: the posterior is the same, only the
    # conditioning of its extra UNet calls differs (pooled text, size ids: run_conditions).
    families = frozenset({"sd1", "sdxl", "flux"})

    def __init__(
        self,
        weight: float = 0.4,
        truncation: Truncation = "reference",
        clamp_x0: bool = True,
        divide_by_coef1: bool = True,
        reduction: Reduction = "mean",
    ) -> None:
        """
        Args:
            weight: the authors' ``sude_weight`` is 0.4.
            truncation: ``reference`` (authors): a sample adds l only where l > l_ref;
                ``zero``: only where l > 0; ``none``: always.
            clamp_x0: clamp the superclass and unconditional x_0 to [-1, 1] (authors).
            divide_by_coef1: divide by the posterior mean's x_0 coefficient (authors).
            reduction: ``mean`` over each sample's latent elements (authors), or ``sum`` over
                them (the Gaussian's own norm); either way one l per sample, whose
                truncation is decided on its own, and the batch mean at the end.
        """
        super().__init__(weight)
        if truncation not in ("reference", "zero", "none"):
            raise ValueError(
                f"SuDe truncation must be 'reference', 'zero' or 'none', got {truncation!r}."
            )
        if reduction not in ("sum", "mean"):
            raise ValueError(f"SuDe reduction must be 'sum' or 'mean', got {reduction!r}.")
        self.truncation: Truncation = truncation
        self.clamp_x0 = clamp_x0
        self.divide_by_coef1 = divide_by_coef1
        self.reduction: Reduction = reduction
        self.cache = FrozenPromptCache()

    def prepare(self, module: ModelView) -> None:
        if not is_flow_matching(module):
            check_epsilon_prediction(module.noise_scheduler, "SuDe")

    def prefill(self, module: ModelView, datamodule: Any) -> None:
        """Encode every superclass prompt the DataModule can give and the empty one, once."""
        self.cache.prefill(module, possible_texts(datamodule, ["superclass_prompts"], also=("",)))

    def squared(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Each sample's mean (authors) or sum over its latent elements, shape (B,)."""
        squared = (a - b).pow(2).flatten(1)
        return squared.mean(dim=1) if self.reduction == "mean" else squared.sum(dim=1)

    def forward(self, record: StepRecord, module: ModelView) -> torch.Tensor:
        superclass = list(record.batch["superclass_prompts"])
        with torch.no_grad():
            text = self.cache.encode(module, superclass + [""] * len(superclass))
            e_class, e_empty = run_conditions(module, record, text)
        terms = step_posterior(module, record.timesteps)  # flow matching: losses/flow_space.py
        noisy = record.noisy_latents
        mu_subject = posterior_mean(noisy, record.model_pred, terms, clamp=False)
        mu_class = posterior_mean(noisy, e_class, terms, clamp=self.clamp_x0)
        mu_empty = posterior_mean(noisy, e_empty, terms, clamp=self.clamp_x0)
        denominator = 2.0 * terms.variance + VARIANCE_FLOOR
        loss = (
            self.squared(mu_subject, mu_class) - self.squared(mu_subject, mu_empty)
        ) / denominator
        if self.truncation == "reference":
            # The authors' reference: the superclass's estimate from the unclamped x_0 in the
            # subject's slot (the same as mu_class without the clamp).
            mu_class_unclamped = (
                posterior_mean(noisy, e_class, terms, clamp=False) if self.clamp_x0 else mu_class
            )
            reference = (
                self.squared(mu_class_unclamped, mu_class)
                - self.squared(mu_class_unclamped, mu_empty)
            ) / denominator
            loss = torch.where(loss > reference, loss, torch.zeros_like(loss))
        elif self.truncation == "zero":
            loss = torch.where(loss > 0, loss, torch.zeros_like(loss))
        if self.divide_by_coef1:
            loss = loss / terms.coef1
        return loss.mean()
