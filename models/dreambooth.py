"""DreamBooth (Ruiz et al. 2023): the whole denoiser trains (the UNet; FLUX's transformer),
the text encoder optionally.

Prior preservation (the paper's class-specific prior loss) is the base module's
``prior_loss_weight``; the configs turn it on. The concept token is the paper's identifier: it
does not train by default (``train_tokens: false``), as in the paper, where a rare token's fixed
embedding is bound to the subject by fine-tuning the model (ACCORD, too, treats DreamBooth as not
training the target's representation). Initialise it from a rare word (``initializer_word: sks``)
rather than the class word, or "<v1> dog" starts as "dog dog" and the instance and prior losses
pull one condition two ways. The export is a full pipeline folder that diffusers loads as is.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from torch import nn

from backbones import family_of_pipeline
from exports.external_formats import A1111_FOLDER
from exports.manifest import Format
from exports.single_file import SINGLE_FILE, check_single_file_family, write_single_file
from models.base import PersonalizationModule

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline



class DreamBooth(PersonalizationModule):
    """Fine-tunes the UNet (and, if asked, the text encoder) on the subject's photos."""

    families: ClassVar[frozenset[str]] = frozenset({"sd1", "sdxl", "flux"})
    EXPORT_FORMATS: ClassVar[tuple[tuple[str, str], ...]] = (
        (SINGLE_FILE, Format.SINGLE_FILE_CHECKPOINT),
        (f"{A1111_FOLDER}/*", Format.A1111_EMBEDDING),
        ("*", Format.DIFFUSERS_PIPELINE),  # model_index.json, unet/, text_encoder/, ...
    )

    def __init__(
        self,
        train_text_encoder: bool = False,
        gradient_checkpointing: bool = False,
        export_single_file: bool = False,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            train_text_encoder: also fine-tune the text encoder (its own ``text_encoder``
                learning-rate group; diffusers' recipe uses a smaller one). Its 49408-row
                token matrix stays frozen; the concept rows follow ``train_tokens``.
            gradient_checkpointing: recompute activations in the backward pass (UNet, and the
                text encoder when it trains): less memory for one more forward pass.
            export_single_file: also export the pipeline as one original-layout checkpoint
                (``sd_checkpoint.safetensors``, for A1111 / ComfyUI): another copy of the
                whole model, in every step export too.
        """
        kwargs.setdefault("train_tokens", False)
        if kwargs.get("num_vectors", 1) != 1:
            raise ValueError(
                "DreamBooth uses one identifier token per concept (num_vectors: 1): its export "
                "is a plain pipeline, which would not expand a multi-vector token in prompts."
            )
        super().__init__(**kwargs)
        check_single_file_family(export_single_file, self.family.name)
        self.train_text_encoder = train_text_encoder
        self.export_single_file = export_single_file
        self.unet.requires_grad_(True)
        if train_text_encoder:  # every text encoder of the family (SDXL: both)
            for encoder, tokens in zip(self.text_encoders, self.encoder_concept_tokens):
                encoder.requires_grad_(True)
                tokens.embedding.base.weight.requires_grad_(False)
                tokens.embedding.vectors.requires_grad_(bool(kwargs["train_tokens"]))
        if gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
            for encoder in self.text_encoders if train_text_encoder else []:
                # transformers 5 renamed it; older releases have the old name
                enable = getattr(encoder, "activation_checkpointing_enable", None)
                (enable or encoder.gradient_checkpointing_enable)()
        # Lightning does not call train() when fitting starts: put the trained parts in train mode.
        self.train(self.training)

    def trained_components(self) -> tuple[nn.Module, ...]:
        return (self.unet, *self.text_encoders) if self.train_text_encoder else (self.unet,)

    def trainable_groups(self) -> dict[str, list[nn.Parameter]]:
        groups = super().trainable_groups()
        groups["unet"] = [p for p in self.unet.parameters() if p.requires_grad]
        if self.train_text_encoder:
            vectors = {id(t.embedding.vectors) for t in self.encoder_concept_tokens}
            groups["text_encoder"] = [
                p
                for encoder in self.text_encoders
                for p in encoder.parameters()
                if p.requires_grad and id(p) not in vectors
            ]
        return groups

    def export(self, folder: Path) -> list[Path]:
        """A full pipeline folder (``save_pretrained``) with the DDIM sampler ``generate`` uses,
        each concept's ``a1111/<token>.safetensors`` embedding, and with ``export_single_file``
        the same weights as one original-layout checkpoint (``sd_checkpoint.safetensors``)."""
        folder.mkdir(parents=True, exist_ok=True)
        text_encoders = [self.standalone_text_encoder(i) for i in range(len(self.text_encoders))]
        pipe = self.ddim_pipeline(*text_encoders)
        pipe.save_pretrained(folder, safe_serialization=True)
        if self.export_single_file:
            vocabulary = self.concept_tokens.embedding.base.weight.shape[0]
            write_single_file(folder / SINGLE_FILE, pipe.unet, pipe.vae, text_encoders, vocabulary)
        # The folder holds the vectors merged already; the a1111/ files are for the clients.
        self.export_token_embeddings({}, a1111_only=True, folder=folder)
        return sorted(p for p in folder.rglob("*") if p.is_file())

    @staticmethod
    def load_into(pipeline: StableDiffusionPipeline, folder: str | Path) -> None:
        """A DreamBooth export is itself a whole pipeline folder
        (``StableDiffusionPipeline.from_pretrained(folder)`` loads it as is). Into an existing
        ``pipeline``: its UNet, text encoder, VAE and tokenizer are replaced by the folder's
        (each with its class's ``from_pretrained``, on the pipeline's device and dtype); the
        pipeline's scheduler stays."""
        folder = Path(folder)
        parts: dict[str, Any] = {}
        family = family_of_pipeline(pipeline)
        for name in (family.denoiser_name, *family.text_encoder_names, "vae"):
            current = getattr(pipeline, name)
            loaded = type(current).from_pretrained(folder, subfolder=name, dtype=current.dtype)
            parts[name] = loaded.to(current.device)
        for name in family.tokenizer_names:
            parts[name] = type(getattr(pipeline, name)).from_pretrained(folder, subfolder=name)
        pipeline.register_modules(**parts)
