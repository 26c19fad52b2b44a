"""ACCORD's DDLoss and PDLoss for IPAdapter, where the concept c_p is the reference image.

ACCORD's losses assume c_p is text ("<v1> person" with a learned token). In IP-Adapter the
subject enters through the image tokens instead (the prompt says only "person"), so:

* DDLoss: e(cp, cg) and e(cp) keep each sample's image tokens (the concept), e(cg) and e(empty)
  run with the zero-image tokens (the model's prior without the concept; no gradient, as in
  the paper). Keeping the image in all four would leave the concept inside e(cg) and e(empty)
  and cancel what the loss measures. Everything else is ``DenoisingDecoupleLoss``'s.
* PDLoss: f_p is the image side's concept feature, ``IPAdapter.concept_features`` (the mean
  image token through CLIP's text projection, gradient to the resampler); f_g and f_s are
  ``PriorDecoupleLoss``'s projected CLIP text features of c_g and the class word.

They call ``IPAdapter``'s methods (``without_image``, ``concept_features``), so they live with
the baseline rather than in losses/ (whose losses read only the documented model view).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from components.text_projection import project
from losses.dd_loss import DenoisingDecoupleLoss, run_conditions
from losses.pd_loss import PriorDecoupleLoss, prior_decouple
from step.record import StepRecord
from step.requests import TextRequest

if TYPE_CHECKING:
    from models.ip_adapter import IPAdapter


def _check_ip_adapter(module: Any, loss: str) -> None:
    if not (hasattr(module, "without_image") and hasattr(module, "concept_features")):
        raise ValueError(
            f"{loss} reads the concept from IPAdapter's image tokens; use it with "
            "models.ip_adapter.IPAdapter (other baselines take losses.dd_loss / losses.pd_loss)."
        )


class ImageDenoisingDecoupleLoss(DenoisingDecoupleLoss):
    """DDLoss with the image as the concept: cg and empty are predicted without the image."""

    def prepare(self, module: Any) -> None:
        _check_ip_adapter(module, "ImageDenoisingDecoupleLoss")
        super().prepare(module)

    def predictions(self, record: StepRecord, module: IPAdapter) -> tuple[torch.Tensor, ...]:  # type: ignore[override]
        """e(cp, cg), e(cp) with the image tokens; e(cg), e(empty) without the image."""
        batch = record.batch
        full, concept = list(batch["caption_full"]), list(batch["caption_concept"])
        general, empty = list(batch["caption_general"]), [""] * len(full)
        reuse_full = full == list(batch["prompts"])  # the step's own pass, image included
        with_grad = ([] if reuse_full else full) + ([] if self.stop_concept_gradient else concept)
        outputs: list[torch.Tensor] = []
        if with_grad:
            outputs += run_conditions(module, record, module.encode_text(with_grad))
        with torch.no_grad():
            if self.stop_concept_gradient:
                outputs += run_conditions(module, record, module.encode_text(concept))
            with module.without_image():
                stopped = run_conditions(module, record, self.cache.encode(module, general + empty))
        if reuse_full:
            outputs.insert(0, record.model_pred)
        return (*outputs, *stopped)


class ImagePriorDecoupleLoss(PriorDecoupleLoss):
    """PDLoss with f_p from the image tokens: |cos(f_p, f_g) - cos(f_s, f_g)|, batch mean."""

    def prepare(self, module: Any) -> None:
        _check_ip_adapter(module, "ImagePriorDecoupleLoss")
        if self.text_feature == "pooled":
            raise ValueError("ImagePriorDecoupleLoss projects with CLIP's text projection: "
                             "text_feature must be 'clip' or 'auto' (SD 1.x).")  # fmt: skip
        super().prepare(module)

    def text_requests(self, batch: dict[str, Any], module: Any) -> list[TextRequest]:
        """Only the targets not yet cached: f_p comes from the image, not from text."""
        return self.cache.requests(module, self.targets(batch))

    def forward(self, record: StepRecord, module: IPAdapter) -> torch.Tensor:  # type: ignore[override]
        requested = self.requested_text(record, module)
        fresh = requested[0][1] if requested else None
        fixed = self.cache.encode(module, self.targets(record.batch), fresh)
        pooled = fixed.clip_text_feature(module.tokenizer.eos_token_id).float()
        targets = project(module.text_projection(self.clip_model), pooled)
        f_p = module.concept_features(self.clip_model)
        size = f_p.shape[0]
        f_g, f_s = targets[:size], targets[size:]
        return prior_decouple(f_p, f_g, f_s, self.target)
