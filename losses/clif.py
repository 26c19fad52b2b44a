"""CLIF's contrastive loss, ``clif``: Eq. (5) of the paper, made symmetric as CLIP's is.

For a batch of augmented pairs (image q_i, prompt p_i), with t_i the CLIP-projected
end-of-text feature of p_i (concept tokens injected) and v_i the frozen CLIP image embedding
of q_i, both L2-normalised, and s = CLIP's logit scale (or 1 / temperature):

    L = 1/2 [ -1/N sum_i log softmax_j(s t_i . v_j)_i  -  1/N sum_i log softmax_j(s v_i . t_j)_i ]

Pairs with the same prompt (G-Aug's and R-Aug's prompts repeat within a batch) have the same
text feature, so their rows and columns tie: the loss is then exactly the one that counts them
as each other's positives (target spread evenly over them); no special case is needed
(tests/losses/test_clif_loss.py). The negatives of a pair are the other pairs of the whole
batch: under DDP the features of
every rank are gathered with their gradients (each rank scores its own rows against all
columns, and DDP's mean over ranks makes the global mean). Gradient reaches the text side only:
the concept tokens, and a text-encoder LoRA when one trains. No UNet call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from components.clip_image import ClipImageFeatures
from components.text_masking import trim_padding
from components.text_projection import default_clip_for, project
from losses.base import Regularizer
from step.record import StepRecord
from step.requests import TextRequest

if TYPE_CHECKING:
    from losses.model_view import ModelView
    from step.encoding import TextEncoding

CLIF_BATCH_KEYS = frozenset({"clif_pixel_values", "clif_prompts"})


def symmetric_info_nce(
    text: torch.Tensor,
    image: torch.Tensor,
    scale: float,
    all_text: torch.Tensor | None = None,
    all_image: torch.Tensor | None = None,
    offset: int = 0,
) -> torch.Tensor:
    """The loss of the local rows `text`, `image` (N, D) against all columns (the gathered
    batch, local rows at `offset`; None: the local batch alone)."""
    text, image = F.normalize(text.float(), dim=-1), F.normalize(image.float(), dim=-1)
    all_text = text if all_text is None else F.normalize(all_text.float(), dim=-1)
    all_image = image if all_image is None else F.normalize(all_image.float(), dim=-1)
    labels = torch.arange(offset, offset + text.shape[0], device=text.device)
    text_to_image = F.cross_entropy(scale * text @ all_image.T, labels)
    image_to_text = F.cross_entropy(scale * image @ all_text.T, labels)
    return (text_to_image + image_to_text) / 2


def gather_with_grad(module: Any, features: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(every rank's features stacked, this rank's offset); the local ones without DDP.
    Every rank must hold the same number of rows (the DataModule's equal shards do)."""
    trainer = getattr(module, "_trainer", None)
    if trainer is None or trainer.world_size == 1:
        return features, 0
    gathered = module.all_gather(features, sync_grads=True)  # (world, N, D), carries grads
    return gathered.flatten(0, 1), trainer.global_rank * features.shape[0]


class ContrastiveLanguageImageLoss(Regularizer):
    """Symmetric InfoNCE between augmented images and their prompts (see the module doc)."""

    name = "clif"
    requires = CLIF_BATCH_KEYS
    # SDXL: the text side is its first encoder (CLIP ViT-L) at its last layer, through CLIP's
    # text projection, as CLIF's official SDXL code compares (at the real end-of-text).
    families = frozenset({"sd1", "sdxl", "flux"})

    def __init__(
        self, weight: float = 1.0, clip_model: str | None = None, temperature: float | None = None
    ) -> None:
        """
        Args:
            weight: the loss's weight beside the denoising loss (CLIF's stage 1 uses it alone).
            clip_model: the CLIP whose image tower and text projection are used; None: the one
                whose text tower the diffusion model's text encoder is.
            temperature: logits = cosine / temperature; None: CLIP's own learned logit scale.
        """
        super().__init__(weight)
        if temperature is not None and not temperature > 0:
            raise ValueError(f"clif temperature must be > 0 (or null), got {temperature}.")
        self.clip_model, self.temperature = clip_model, temperature
        self.token_ids: dict[str, torch.Tensor] = {}

    def image_tower(self, module: ModelView) -> ClipImageFeatures:
        """Loaded once, kept out of the state dict (it never trains), on the module's device."""
        name = self.clip_model or default_clip_for(module.pretrained_model_name_or_path)
        tower = self.__dict__.get("_tower")
        if tower is None or tower.name != name:
            tower = ClipImageFeatures(name)
            self.__dict__["_tower"] = tower
        if tower.mean.device != module.device:
            tower.to(module.device)
        return tower

    def prepare(self, module: ModelView) -> None:
        """Load both CLIP parts now, so a bad clip_model fails before training."""
        tower = self.image_tower(module)
        projection = module.text_projection(self.clip_model)
        if projection.out_features != tower.visual_projection.out_features:
            raise ValueError(
                f"clif: the text projection ({projection.out_features}) and image projection "
                f"({tower.visual_projection.out_features}) widths differ; clip_model must name "
                "one CLIP model."
            )

    def scale(self, module: ModelView) -> float:
        return 1.0 / self.temperature if self.temperature else self.image_tower(module).logit_scale

    def text_requests(
        self, batch: dict[str, Any], module: ModelView
    ) -> list[TextRequest]:
        """The pairs' prompts with gradient, cut after their end-of-text (only the pooled
        feature is read)."""
        prompts = list(batch["clif_prompts"])
        if len(self.token_ids) > 4096:
            self.token_ids.clear()
        new = [p for p in dict.fromkeys(prompts) if p not in self.token_ids]
        if new:
            self.token_ids.update(zip(new, module.tokenize(new)))
        ids = torch.stack([self.token_ids[p] for p in prompts])
        return [TextRequest(trim_padding(ids, module.tokenizer.eos_token_id))]

    def loss_from(
        self, batch: dict[str, Any], encoding: TextEncoding, module: ModelView
    ) -> torch.Tensor:
        """The loss given the prompts' encoding (the step's, or CLIF stage 1's own call)."""
        pooled = encoding.clip_text_feature(module.tokenizer.eos_token_id)
        text = project(module.text_projection(self.clip_model), pooled)
        image = self.image_tower(module)(batch["clif_pixel_values"].to(module.device))
        all_text, offset = gather_with_grad(module, text)
        all_image, _ = gather_with_grad(module, image)
        return symmetric_info_nce(text, image, self.scale(module), all_text, all_image, offset)

    def forward(self, record: StepRecord, module: ModelView) -> torch.Tensor:
        ((_, encoding),) = self.requested_text(record, module)
        return self.loss_from(record.batch, encoding, module)
