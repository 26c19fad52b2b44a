"""Textual Inversion (Gal et al. 2022): only the concept token vectors train."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from exports.external_formats import A1111_FOLDER, load_embedding
from exports.manifest import Format
from models.base import PersonalizationModule

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline

LEARNED_EMBEDS = "learned_embeds.safetensors"


class TextualInversion(PersonalizationModule):
    """Learns ``num_vectors`` embedding vectors per concept; the whole model stays frozen."""

    families: ClassVar[frozenset[str]] = frozenset({"sd1", "sdxl", "flux"})
    EXPORT_FORMATS: ClassVar[tuple[tuple[str, str], ...]] = (
        ("learned_embeds*.safetensors", Format.TEXTUAL_INVERSION),
        (f"{A1111_FOLDER}/*", Format.A1111_EMBEDDING),
    )

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("train_tokens", True)
        if not kwargs["train_tokens"]:
            raise ValueError("TextualInversion trains the concept tokens; set train_tokens: true.")
        super().__init__(**kwargs)

    def export(self, folder: Path) -> list[Path]:
        """``learned_embeds.safetensors`` (one concept) or ``learned_embeds-<i>.safetensors``
        (several, since diffusers' ``load_textual_inversion`` reads one token per file)."""
        folder.mkdir(parents=True, exist_ok=True)
        if len(self.concepts) == 1:
            paths = {self.concepts[0].token: folder / LEARNED_EMBEDS}
        else:
            paths = {
                c.token: folder / f"learned_embeds-{i}.safetensors"
                for i, c in enumerate(self.concepts)
            }
        return self.export_token_embeddings(paths)

    @staticmethod
    def load_into(pipeline: StableDiffusionPipeline, folder: str | Path) -> None:
        """Each ``learned_embeds*.safetensors`` of an export through diffusers'
        ``load_textual_inversion`` (an SDXL file's vectors into each encoder)."""
        for path in sorted(Path(folder).glob("learned_embeds*.safetensors")):
            load_embedding(pipeline, path)
