"""Pretraining of the MLM contextualizer psi and the ``[MASK]`` vector (paper's Algorithm 1).

    python train.py fit --config configs/diverse_context/contextualizer.yaml
    (add --config configs/tiny.yaml for the tiny pipeline)

Only the tokenizer and the CLIP text encoder of the base model are loaded (the UNet and VAE play
no part; both stay untouched). The text encoder is frozen; ``[MASK]`` is one learned vector
swapped into its embedding lookup at id ``vocab_size`` by the concept-token mechanism
(`ConceptEmbedding`), so the encoder's 49408-row matrix is never copied or trained. Each step
masks 15% of each corpus prompt's tokens, encodes, and trains psi (and ``[MASK]``) with the
cross-entropy at masked positions. At the end of training rank zero exports psi to the default
place of its base model (`default_contextualizer_dir`), where the ``mlm`` regularizer reads it;
``ExportWeights`` also writes a copy into the run's ``export/``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import lightning as L
import torch
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from transformers import CLIPTextModel, CLIPTokenizer

from backbones import AUTO, choose_family
from backbones.base import family_error
from components.contextualizer.network import (
    Contextualizer,
    ContextualizerConfig,
    padding_after_eos,
)
from components.contextualizer.store import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    default_contextualizer_dir,
    save_contextualizer,
    text_encoder_fingerprint,
    tokenizer_fingerprint,
)
from components.text_masking import (
    apply_mask,
    draw_mask,
    masked_cross_entropy,
    prompt_positions,
    trim_padding,
)
from core.concept import ConceptSpec
from core.options import accepts_options_of
from exports.manifest import Format
from models.base import PersonalizationModule
from models.text.concept_tokens import ConceptEmbedding
from pretrained.resolve import resolve_pretrained
from step.encoding import tokenize_padded


def _default_optimizer(params: Any) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-2)


def load_text_components(
    name_or_path: str, revision: str | None = None, variant: str | None = None
) -> tuple[CLIPTokenizer, CLIPTextModel]:
    """The tokenizer and text encoder of a Stable Diffusion folder or hub id (or tiny-sd)."""
    path = resolve_pretrained(name_or_path)
    try:
        tokenizer = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer", revision=revision)
        text_encoder = CLIPTextModel.from_pretrained(
            path, subfolder="text_encoder", revision=revision, variant=variant
        )
    except (OSError, ValueError) as error:
        raise OSError(
            f"Could not load the tokenizer and text encoder of {name_or_path!r}: {error}\n"
            "Give a local diffusers folder, a hub id in the local cache, or 'tiny-sd'."
        ) from error
    return tokenizer, text_encoder


@accepts_options_of(PersonalizationModule)
class ContextualizerPretraining(L.LightningModule):
    """Trains psi and ``[MASK]`` by masked-token prediction on the frozen text encoder."""

    EXPORT_FORMATS: ClassVar[tuple[tuple[str, str], ...]] = (  # export.json in export/
        (WEIGHTS_FILE, Format.MLM_CONTEXTUALIZER),
        (CONFIG_FILE, Format.MLM_CONTEXTUALIZER_CONFIG),
    )

    def __init__(
        self,
        pretrained_model_name_or_path: str = "tiny-sd",
        num_layers: int = 4,
        num_heads: int = 4,
        feedforward_size: int | None = None,
        dropout: float = 0.1,
        mask_probability: float = 0.15,
        optimizer: OptimizerCallable = _default_optimizer,
        lr_warmup_steps: int = 0,
        export_dir: str | None = None,
        seed: int = 0,
        revision: str | None = None,
        variant: str | None = None,
        concepts: list[ConceptSpec] | None = None,
        **ignored: Any,
    ) -> None:
        """
        Args:
            pretrained_model_name_or_path: the base model whose text encoder psi reads.
            num_layers / num_heads / feedforward_size / dropout: psi's shape
                (docs/DESIGN.md, "MLM": 4 layers, 4 heads).
            mask_probability: rho (the paper: 15%, after BERT).
            optimizer: a callable taking the parameter list (``class_path`` in configs).
            lr_warmup_steps: linear warm-up, then constant.
            export_dir: where the end of training exports psi; None: the base model's default
                place, which the ``mlm`` regularizer reads (``$PERSONALIZE_CACHE/runs/...``).
            seed: seeds the masking draws by (seed, step, rank), so a resume repeats them.
            concepts: linked from the DataModule by train.py; unused (Algorithm 1 involves no
                concept token).
            ignored: the personalization module's other options, which shared overlays such
                as configs/tiny.yaml set (see `accepts_options_of`); unused here.
        """
        super().__init__()
        family, pretrained_model_name_or_path = choose_family(
            pretrained_model_name_or_path, str(ignored.get("backbone", AUTO))
        )
        # psi reads one CLIP text encoder's states: SD 1.x's, SDXL's first or FLUX's (CLIP
        # ViT-L, in the tokenizer/ and text_encoder/ folders of all three).
        if family.name not in ("sd1", "sdxl", "flux"):
            supported = {"sd1", "sdxl", "flux"}
            raise ValueError(family_error(family, "The contextualizer's pretraining", supported))
        self.pretrained_model_name_or_path = pretrained_model_name_or_path
        self.tokenizer, self.text_encoder = load_text_components(
            pretrained_model_name_or_path, revision, variant
        )
        self.text_encoder.requires_grad_(False)
        self.text_encoder.eval()
        base = self.text_encoder.get_input_embeddings()
        self.vocab_size = base.num_embeddings  # the [MASK] id: the first row past the matrix
        lookup = ConceptEmbedding(base, num_vectors=1)
        with torch.no_grad():  # "random initialize p_mask", at the scale of real token rows
            lookup.vectors.normal_(0.0, float(base.weight.float().std()))
        self.text_encoder.set_input_embeddings(lookup)
        self.contextualizer = Contextualizer(
            ContextualizerConfig(
                hidden_size=self.text_encoder.config.hidden_size,
                vocab_size=self.vocab_size,
                num_layers=num_layers,
                num_heads=num_heads,
                feedforward_size=feedforward_size,
                dropout=dropout,
            )
        )
        if not 0.0 < mask_probability <= 1.0:
            raise ValueError(f"mask_probability must be in (0, 1], got {mask_probability}.")
        self.mask_probability = mask_probability
        self.optimizer_factory = optimizer
        self.lr_warmup_steps = lr_warmup_steps
        self.export_dir = export_dir
        self.seed = seed
        self.strict_loading = False  # checkpoints hold only psi and [MASK]

    @property
    def mask_vector(self) -> nn.Parameter:
        """The learned [MASK] vector (1, D): the one row of the swapped-in lookup."""
        return self.text_encoder.get_input_embeddings().vectors

    # ----- the MLM step ----------------------------------------------------------------------
    def generator(self, step: int, salt: int = 0) -> torch.Generator:
        generator = torch.Generator(device=self.device)
        rank = self.global_rank if self._trainer is not None else 0
        generator.manual_seed(((self.seed * 1_000_003 + step) * 1009 + rank) * 7 + salt)
        return generator

    def mlm_step(self, prompts: list[str], generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Masked cross-entropy and accuracy of one batch; ``count`` = masked tokens."""
        input_ids = tokenize_padded(self.tokenizer, prompts, self.device)
        eos = self.tokenizer.eos_token_id
        input_ids = trim_padding(input_ids, eos)
        masked = draw_mask(prompt_positions(input_ids, eos), self.mask_probability, generator)
        masked_ids = apply_mask(input_ids, masked, self.vocab_size)
        hidden = self.text_encoder(masked_ids).last_hidden_state
        padding = padding_after_eos(masked_ids, eos)
        logits = self.contextualizer(hidden, padding_mask=padding, positions=masked)
        loss = masked_cross_entropy(logits, input_ids, masked)
        correct = (logits.argmax(dim=-1) == input_ids[masked]).float()
        accuracy = correct.mean() if correct.numel() else loss.new_zeros(())
        return {"loss": loss, "accuracy": accuracy, "count": masked.sum()}

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        result = self.mlm_step(list(batch["prompts"]), self.generator(self.global_step))
        if int(result["count"]) == 0:
            return None  # nothing was masked: no prediction to learn from, skip the step
        size = len(batch["prompts"])
        self.log("train/loss/mlm", result["loss"].detach(), prog_bar=True, batch_size=size)
        self.log("train/accuracy", result["accuracy"], batch_size=size)
        return result["loss"]

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Held-out corpus prompts, masks fixed by batch index."""
        result = self.mlm_step(list(batch["prompts"]), self.generator(batch_idx, salt=1))
        size = len(batch["prompts"])
        self.log("val/loss/mlm", result["loss"], batch_size=size)
        self.log("val/accuracy", result["accuracy"], batch_size=size)

    # ----- what trains, what is saved --------------------------------------------------------
    def trainable_parameters(self) -> list[nn.Parameter]:
        return [self.mask_vector, *self.contextualizer.parameters()]

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = self.optimizer_factory(self.trainable_parameters())
        warmup = max(self.lr_warmup_steps, 0)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: min(1.0, (step + 1) / warmup) if warmup else 1.0
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def train(self, mode: bool = True) -> ContextualizerPretraining:
        """The frozen text encoder stays in eval mode whatever Lightning asks."""
        super().train(mode)
        self.text_encoder.eval()
        return self

    def trainable_state_keys(self) -> set[str]:
        return {name for name, p in self.named_parameters() if p.requires_grad}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        keep = self.trainable_state_keys()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}

    def export(self, folder: Path) -> list[Path]:
        """contextualizer.safetensors (psi + [MASK]) and contextualizer.json (what it is for)."""
        metadata = {
            "pretrained_model_name_or_path": self.pretrained_model_name_or_path,
            "tokenizer_sha256": tokenizer_fingerprint(self.tokenizer, self.vocab_size),
            "text_encoder_sha256": text_encoder_fingerprint(self.text_encoder),
            "mask_probability": self.mask_probability,
            "global_step": int(self.global_step),
        }
        return save_contextualizer(folder, self.contextualizer, self.mask_vector, metadata)

    def on_train_end(self) -> None:
        if not self.trainer.is_global_zero:
            return
        name = self.pretrained_model_name_or_path
        folder = Path(self.export_dir or default_contextualizer_dir(name))
        self.export(folder)
        rank_zero_info(f"Contextualizer exported to {folder} (the mlm loss reads it from there).")
