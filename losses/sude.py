"""Facechain-SuDe's subject-derived regularization, ``sude`` (ACCORD's comparison).

SuDe (Qiao et al., CVPR 2024) makes the subject a derived class of its superclass: the image
denoised under the subject prompt c_sub ("a photo of a <v1> dog") should still be classified
as the superclass c_sup ("a photo of a dog"), with the diffusion model as the implicit
classifier. Bayes on one reverse step, with the denoised x_{t-1} = mu(x_t, c_sub):

    log p(c_sup | x_{t-1}) = log p(c_sup | x_t)
        - [||x_{t-1} - mu(x_t, c_sup)||^2 - ||x_{t-1} - mu(x_t, empty)||^2] / (2 sigma_t^2)

which in epsilon space (``losses/epsilon_space.py``) gives the formula used here:

    L_sude = mean over the batch of  R( rho_t [ ||e(c_sub) - sg e(c_sup)||^2
                                               - ||e(c_sub) - sg e(empty)||^2 ] )
    rho_t  = beta_t / (2 alpha_t (1 - alphabar_{t-1})),   rho_0 = 0

i.e. -log p(c_sup | x_{t-1}) up to the constant -log p(c_sup | x_t). e(c_sub) is the step's own
prediction (with its gradient); the superclass and empty passes run together without gradient
(sg), which ACCORD adopts from SuDe. R is SuDe's loss truncation: where the classifier already
gives p(c_sup | x_{t-1}) >= tau, i.e. L <= -log tau, the sample adds 0; without it the second
term would reward pushing e(c_sub) ever further from the unconditional prediction. The paper's
tau is not in our sources; the default tau = 1 (stop once the step no longer lowers the
superclass probability) is our choice, ``truncation: null`` turns it off.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch

from losses.base import Regularizer
from losses.dd_loss import run_conditions
from losses.epsilon_space import (
    Reduction,
    check_epsilon_prediction,
    posterior_weight,
    squared_distance,
)
from losses.prompt_cache import FrozenPromptCache, possible_texts
from models.components.step_record import StepRecord

if TYPE_CHECKING:
    from models.base import PersonalizationModule


class SubjectDerivedLoss(Regularizer):
    """-log p(superclass | denoised under the subject prompt), truncated; see the module doc."""

    name = "sude"
    requires = frozenset({"superclass_prompts"})

    def __init__(
        self,
        weight: float = 1.0,
        truncation: float | None = 1.0,
        reduction: Reduction = "sum",
    ) -> None:
        """
        Args:
            weight: the loss weight.
            truncation: tau; samples with p(c_sup | x_{t-1}) >= tau add 0 (None: no truncation).
            reduction: ``sum`` over latent elements (the Gaussian's norm) or ``mean``.
        """
        super().__init__(weight)
        if truncation is not None and truncation <= 0:
            raise ValueError(f"SuDe truncation is a probability > 0, got {truncation}.")
        if reduction not in ("sum", "mean"):
            raise ValueError(f"SuDe reduction must be 'sum' or 'mean', got {reduction!r}.")
        self.truncation = truncation
        self.reduction: Reduction = reduction
        self.cache = FrozenPromptCache()

    def prepare(self, module: PersonalizationModule) -> None:
        check_epsilon_prediction(module.noise_scheduler, "SuDe")

    def prefill(self, module: PersonalizationModule, datamodule: Any) -> None:
        """Encode every superclass prompt the DataModule can give and the empty one, once."""
        self.cache.prefill(module, possible_texts(datamodule, ["superclass_prompts"], also=("",)))

    def forward(self, record: StepRecord, module: PersonalizationModule) -> torch.Tensor:
        superclass = list(record.batch["superclass_prompts"])
        with torch.no_grad():
            states = self.cache.encode(module, superclass + [""] * len(superclass)).conditioning
            e_superclass, e_empty = run_conditions(module, record, states)
        e_subject = record.model_pred
        loss = posterior_weight(module.noise_scheduler, record.timesteps) * (
            squared_distance(e_subject, e_superclass, self.reduction)
            - squared_distance(e_subject, e_empty, self.reduction)
        )
        if self.truncation is not None:
            loss = torch.where(loss > -math.log(self.truncation), loss, torch.zeros_like(loss))
        return loss.mean()
