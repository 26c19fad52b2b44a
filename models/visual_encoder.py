"""VisualEncoder (ACCORD's baseline, after IP-Adapter): the concept token's vectors come from the
subject's photos through a frozen CLIP image encoder and a trained mapper (`SubjectEncoder`).

Training runs across several subjects that share one token (DataModule ``shared_tokens``):
each sample brings a reference photo of its subject (``reference_pixel_values``) and the
prompt's concept token reads that sample's mapped vectors. Afterwards a new subject needs no
tuning: ``embed_subject(photos)`` gives its vectors, ``set_subject`` makes prompts use them.

Prompts map to samples by position: prompt j reads sample j mod B of the current batch, so
regularizers that stack conditions as [all samples' cond 1, all samples' cond 2] (or prior
preservation's instance-then-class batches) line up. Outside training, the subject set with
``set_subject`` (else the first training subject's photos, for sample grids) is used.

Export: ``visual_encoder.safetensors`` (the mapper, its settings in the metadata);
`load_subject_encoder` rebuilds the encoder from it, and `install_subject` puts a new subject's
vectors into any diffusers pipeline as an ordinary textual-inversion token.

On SDXL (ACCORD's Table 2) the mapper writes both text encoders' vectors: one mapper whose
token vectors are the two encoders' widths side by side (768 + 1280), each encoder's lookup
reading its own part, so one image embedding decides the token in both.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from backbones import pipeline_text_parts
from exports.manifest import Format, not_loadable
from models.base import PersonalizationModule
from models.subject_encoder import (
    SubjectEncoder,
    TokenMapper,
    chosen_image_encoder,
    load_image_encoder,
)
from step.draws import SampleDraws

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline

VISUAL_ENCODER_WEIGHTS = "visual_encoder.safetensors"
REFERENCE_KEY = "reference_pixel_values"


class VisualEncoder(PersonalizationModule):
    """Trains only the image-to-token mapper; CLIP, the text encoder and the UNet stay frozen."""

    families: ClassVar[frozenset[str]] = frozenset({"sd1", "sdxl", "flux"})
    EXPORT_FORMATS: ClassVar[tuple[tuple[str, str], ...]] = (
        (VISUAL_ENCODER_WEIGHTS, Format.VISUAL_ENCODER_MAPPER),
    )
    LOAD_INSTEAD: ClassVar[str] = (
        "it maps a subject's photos to the token's vectors; encoder, token = "
        "models.visual_encoder.load_subject_encoder(folder), then "
        "install_subject(pipe, encoder.embed_subject(photos), token)"
    )

    def __init__(
        self,
        image_encoder_name_or_path: str | None = None,
        image_encoder_subfolder: str | None = None,
        hidden_dim: int | None = None,
        num_vectors: int = 4,
        train_tokens: bool = False,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            image_encoder_name_or_path: a CLIP vision model (with projection) or a CLIPModel;
                None: ``tiny-clip`` for ``tiny-sd``, else IP-Adapter's SD 1.5 image encoder
                (``h94/IP-Adapter``, subfolder ``models/image_encoder``).
            image_encoder_subfolder: subfolder of it that holds the model.
            hidden_dim: None for IP-Adapter's linear projection; a width for its MLP variant.
            num_vectors: token vectors per subject; 4, as IP-Adapter's image tokens.
            train_tokens: must stay false: the mapper makes the vectors, they do not train.
        """
        if train_tokens:
            raise ValueError(
                "VisualEncoder maps photos to the token vectors; the vectors themselves do not "
                "train. Set train_tokens: false."
            )
        super().__init__(num_vectors=num_vectors, train_tokens=False, **kwargs)
        if len(self.concepts) != 1:
            raise ValueError(
                f"VisualEncoder learns one image-to-token mapping for one token, got tokens "
                f"{[c.token for c in self.concepts]}; give several subjects the same token and "
                "set data.init_args.shared_tokens: true."
            )
        chosen = chosen_image_encoder(
            self.pretrained_model_name_or_path, self.family.name,
            image_encoder_name_or_path, image_encoder_subfolder,
        )  # fmt: skip
        self.image_encoder_name_or_path, self.image_encoder_subfolder, encoder, mean, std = chosen
        embeddings = [tokens.embedding for tokens in self.encoder_concept_tokens]
        self.token_dims = [e.vectors.shape[-1] for e in embeddings]  # each encoder's width
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)  # the same initial mapper in every run of a seed
            mapper = TokenMapper(
                encoder.config.projection_dim,
                sum(self.token_dims),
                self.concept_tokens.num_vectors,
                hidden_dim,
            )
        mapper.start_near(
            torch.cat([e.vectors[0].detach() for e in embeddings]),
            torch.cat([e.base.weight.detach().std(0) for e in embeddings]),
        )
        self.hidden_dim = hidden_dim
        self.subject_encoder = SubjectEncoder(encoder, mapper, mean, std)
        self._subject: torch.Tensor | None = None  # (B or 1, num_vectors, D) being injected
        self._chosen_subject: torch.Tensor | None = None  # set_subject's, for generation
        self._preview_pixels: torch.Tensor | None = None  # first training subject's photos
        start = 0
        for embedding, width in zip(embeddings, self.token_dims):  # each its own part
            embedding.register_forward_hook(partial(self._inject, part=slice(start, start + width)))
            start += width

    # ----- what trains and how it is saved ----------------------------------------------------
    def frozen_components(self) -> list[nn.Module]:
        """The CLIP image encoder too (IP-Adapter's ViT-H: 632M frozen parameters)."""
        return [*super().frozen_components(), self.subject_encoder.image_encoder]

    def trainable_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"mapper": list(self.subject_encoder.mapper.parameters())}

    def batch_requirements(self) -> dict[str, frozenset[str]]:
        needs = dict(super().batch_requirements())
        needs["VisualEncoder"] = frozenset({REFERENCE_KEY})
        return needs

    def export(self, folder: Path) -> list[Path]:
        """``visual_encoder.safetensors``: the mapper's weights; its settings as metadata."""
        folder.mkdir(parents=True, exist_ok=True)
        mapper = self.subject_encoder.mapper
        weights = {k: v.detach().float().cpu().contiguous() for k, v in mapper.state_dict().items()}
        settings = {
            "token": self.concepts[0].token,
            "num_vectors": mapper.num_vectors,
            "token_dim": mapper.token_dim,
            "token_dims": self.token_dims,
            "feature_dim": self.subject_encoder.image_encoder.config.projection_dim,
            "hidden_dim": self.hidden_dim,
            "image_encoder_name_or_path": self.image_encoder_name_or_path,
            "image_encoder_subfolder": self.image_encoder_subfolder,
        }
        path = folder / VISUAL_ENCODER_WEIGHTS
        save_file(weights, str(path), metadata={"visual_encoder": json.dumps(settings)})
        return [path]

    @classmethod
    def load_into(cls, pipeline: StableDiffusionPipeline, folder: str | Path) -> None:
        """Refused (`NotLoadableError`): the vectors come from a subject's photos; the message
        names `load_subject_encoder` and `install_subject`."""
        raise not_loadable(cls.__name__, folder, cls.LOAD_INSTEAD)

    # ----- subjects ---------------------------------------------------------------------------
    def embed_subject(self, images: Sequence[Image.Image] | torch.Tensor) -> torch.Tensor:
        """A (new) subject's token vectors (num_vectors, D) from its photos; no training."""
        return self.subject_encoder.embed_subject(images)

    def set_subject(self, vectors: torch.Tensor | None) -> None:
        """The subject the concept token stands for in ``generate`` / ``encode_text``."""
        self._chosen_subject = (
            None
            if vectors is None
            else vectors.detach().reshape(1, self.concept_tokens.num_vectors, -1)
        )

    @contextmanager
    def injecting(self, vectors: torch.Tensor) -> Iterator[None]:
        """Within the block, prompt j's concept token reads ``vectors[j % len(vectors)]``."""
        previous, self._subject = self._subject, vectors
        try:
            yield
        finally:
            self._subject = previous

    def _current_subject(self) -> torch.Tensor | None:
        if self._subject is not None:
            return self._subject
        if self._chosen_subject is not None:
            return self._chosen_subject.to(self.device)
        if self._preview_pixels is not None:
            return self.embed_subject(self._preview_pixels.to(self.device))[None]
        return None

    def _inject(
        self, embedding: nn.Module, args: tuple[Any, ...], output: torch.Tensor, part: slice
    ) -> Any:
        """Forward hook of a token lookup: concept positions take the subject's vectors (this
        encoder's ``part`` of them)."""
        input_ids = args[0]
        first, count = embedding.base_vocab_size, self.concept_tokens.num_vectors
        inside = (input_ids >= first) & (input_ids < first + count)
        if not bool(inside.any()):
            return output
        vectors = self._current_subject()
        if vectors is None:
            raise ValueError(
                "VisualEncoder has no subject for the concept token: call set_subject("
                "module.embed_subject(photos)) first."
            )
        rows = input_ids.shape[0]
        used = inside.any(dim=-1).nonzero().flatten()
        whole = rows - rows % len(vectors)  # rows after the last whole batch may not use it
        if int(used.max()) >= max(whole, len(vectors)):
            raise ValueError(
                f"{rows} prompts for {len(vectors)} subject samples: prompt j reads sample j mod "
                f"{len(vectors)}, so stack prompts in whole multiples of the batch."
            )
        per_row = vectors[torch.arange(rows, device=vectors.device) % len(vectors)][..., part]
        slot = (input_ids - first).clamp(0, count - 1)
        picked = per_row.gather(1, slot[..., None].expand(-1, -1, per_row.shape[-1]))
        return torch.where(inside[..., None], picked.to(output.dtype), output)

    # ----- training and generation ------------------------------------------------------------
    def _reference_vectors(self, batch: dict[str, Any]) -> torch.Tensor:
        if REFERENCE_KEY not in batch:
            raise KeyError(
                f"VisualEncoder needs {REFERENCE_KEY!r} in the batch; the DataModule builds it "
                "when the module's setup requests it (fit with a PersonalizationDataModule)."
            )
        return self.subject_encoder(batch[REFERENCE_KEY])

    def compute_losses(self, batch: dict[str, Any], draws: SampleDraws) -> dict[str, Any]:
        with self.injecting(self._reference_vectors(batch)):
            return super().compute_losses(batch, draws)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        with self.injecting(self._reference_vectors(batch)):
            super().validation_step(batch, batch_idx)

    def setup(self, stage: str) -> None:
        """Also keep the first training subject's photos to preview generation with."""
        super().setup(stage)
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer else None
        images = getattr(datamodule, "images", None)
        if images:
            self._preview_pixels = self.subject_encoder.prepare(images[0]).cpu()


# ----- loading an export ------------------------------------------------------------------------
def load_subject_encoder(
    path: str | Path,
    image_encoder_name_or_path: str | None = None,
    image_encoder_subfolder: str | None = None,
) -> tuple[SubjectEncoder, str]:
    """Rebuild the trained `SubjectEncoder` from an export; returns it and its token.

    The image encoder is the one named in the export unless given (e.g. a local copy).
    """
    path = Path(path)
    if path.is_dir():
        path = path / VISUAL_ENCODER_WEIGHTS
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
        if "visual_encoder" not in metadata:
            raise ValueError(f"{str(path)!r} is not a VisualEncoder export (no settings).")
        settings = json.loads(metadata["visual_encoder"])
        weights = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    encoder, mean, std = load_image_encoder(
        image_encoder_name_or_path or settings["image_encoder_name_or_path"],
        image_encoder_subfolder
        if image_encoder_name_or_path
        else settings["image_encoder_subfolder"],
    )
    if encoder.config.projection_dim != settings["feature_dim"]:
        raise ValueError(
            f"The image encoder gives {encoder.config.projection_dim}-d embeddings; the mapper "
            f"in {str(path)!r} was trained on {settings['feature_dim']}-d ones."
        )
    mapper = TokenMapper(
        settings["feature_dim"], settings["token_dim"], settings["num_vectors"],
        settings["hidden_dim"],
    )  # fmt: skip
    mapper.load_state_dict(weights)
    return SubjectEncoder(encoder, mapper, mean, std).eval(), settings["token"]


def install_subject(
    pipe: StableDiffusionPipeline, vectors: torch.Tensor, token: str
) -> StableDiffusionPipeline:
    """Give a diffusers pipeline the subject's vectors as textual-inversion token ``token``
    (an SDXL pipeline: each text encoder its part, in the encoders' order)."""
    vectors = vectors.detach().float().cpu()
    pairs = [(encoder, tokenizer) for tokenizer, encoder in pipeline_text_parts(pipe)]
    widths = [encoder.get_input_embeddings().embedding_dim for encoder, _ in pairs]
    if vectors.shape[-1] != sum(widths):
        raise ValueError(
            f"the subject's vectors are {vectors.shape[-1]} wide; this pipeline's text "
            f"encoders take {' + '.join(map(str, widths))}: load the export into a pipeline of "
            "the base model it was trained on."
        )
    for part, (encoder, tokenizer) in zip(vectors.split(widths, dim=-1), pairs):
        pipe.load_textual_inversion(
            {token: part.contiguous()}, token=token, text_encoder=encoder, tokenizer=tokenizer
        )
    return pipe
