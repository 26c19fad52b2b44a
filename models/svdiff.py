"""SVDiff (Han et al. 2023): fine-tune only the spectral shifts of the model's weight matrices.

Every targeted weight W = U diag(S) Vh (a Linear weight; a Conv2d kernel as an (out,
in*kh*kw) matrix) becomes U diag(ReLU(S + delta)) Vh with delta trained from zeros and U, S, Vh
frozen (models/spectral_shift.py, which also says why we compute it as W plus a residual). The
paper's default, kept here, shifts every Linear and Conv2d of the UNet; ``train_text_encoder``
adds every Linear of the text encoder (the token embedding is the concept tokens' own table and
is left out). Norm layers' 1-D weights have no singular values to shift: mkshing's
svdiff-pytorch, the implementation ClassDiffusion compares, trains a second group on them at lr
1e-6; we leave them out.

Cut-Mix-Unmix (the paper's section 3.3, for two or more concepts), off by default:

- Cut-Mix: each instance sample is, with probability ``cut_mix_probability``, replaced by a
  stitched one: the central half-width strip of its own image beside the central strip of a
  photo of another concept (drawn, with the side, from the sample's own seeded stream), with
  the prompt "photo of a <v1> dog on the left and a <v2> cat on the right". Its noise and
  timestep stay the sample's own; the batch extras of a loss (SPL's superclass prompt, ...) stay
  those of the sample it replaced.
- Unmix: on stitched samples, each concept token's cross-attention probability that falls on
  the other concept's half is pushed to zero: the mean of its squares over those (pixel, token)
  entries, per sample and cross-attention layer (probabilities averaged over heads, each layer
  at its own resolution; a middle column of an odd width belongs to neither half), then averaged
  over samples and layers (`unmix_loss`), weighted by ``unmix_weight``.

The export is ``svdiff_spectral_shifts.safetensors`` ({component.layer: delta}, metadata naming
the base model and the components) plus one ``<token>.safetensors`` per concept;
`load_svdiff` applies it to a diffusers pipeline's weights in place.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from torch.nn.utils import parametrize

from core.concept import vector_token_names
from core.images import cover_crop, resize_short_side, to_tensor
from exports.external_formats import load_embedding
from exports.manifest import TOKEN_FILE_FORMATS, Format
from models.base import PersonalizationModule
from models.cut_mix_unmix import (
    CrossAttentionRecorder,
    Stitched,
    cut_mix_prompt,
    stitch,
    unmix_loss,
)
from models.spectral_shift import (
    add_spectral_shifts,
    check_shifts_fit,
    matching_layers,
    shifted_weight,
    spectral_shifts,
)
from step.draws import SampleDraws
from step.record import StepRecord
from step.requests import TextRequest

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline

__all__ = ["SVDIFF_SHIFTS", "SVDiff", "cut_mix_prompt", "load_svdiff", "stitch", "unmix_loss"]

SVDIFF_SHIFTS = "svdiff_spectral_shifts.safetensors"
# Which pipeline components the shifts may name (the file's key prefix, the pipeline attribute).
COMPONENTS = ("unet", "text_encoder")


def load_svdiff(pipe: StableDiffusionPipeline, folder: str | Path) -> None:
    """Apply an export's spectral shifts to the pipeline's weights in place (each weight's own
    SVD, its singular values shifted), then add each ``<token>``. Every shift is checked
    against the pipeline first, so a file of another model changes nothing."""
    folder = Path(folder)
    path = folder / SVDIFF_SHIFTS
    if not path.is_file():
        raise FileNotFoundError(f"{folder} has no {SVDIFF_SHIFTS}: pass an SVDiff export folder.")
    with safe_open(str(path), framework="pt") as handle:
        shifts = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    by_component: dict[str, dict[str, torch.Tensor]] = {}
    for key, delta in shifts.items():
        component, _, layer = key.partition(".")
        if component not in COMPONENTS or not isinstance(getattr(pipe, component, None), nn.Module):
            raise ValueError(
                f"{path} holds a shift for {key!r}, but its component {component!r} is not one "
                f"of this pipeline's ({', '.join(COMPONENTS)}); it is not an SVDiff export for "
                "a Stable Diffusion 1.x pipeline."
            )
        by_component.setdefault(component, {})[layer] = delta
    for component, layer_shifts in by_component.items():
        check_shifts_fit(getattr(pipe, component), layer_shifts, component)
    token_files = [f for f in sorted(folder.glob("*.safetensors")) if f.name != SVDIFF_SHIFTS]
    vocab = pipe.tokenizer.get_vocab()
    for token_file in token_files:  # a second load (or a clash) stops before any shift
        with safe_open(str(token_file), framework="pt") as handle:
            taken = [t for t in handle.keys() if t in vocab]  # noqa: SIM118
        if taken:
            raise ValueError(
                f"Tokens {taken} of {token_file} are already in the pipeline's tokenizer: an "
                "SVDiff export loads once, into a pipeline of its base model."
            )
    with torch.no_grad():
        for component, layer_shifts in by_component.items():
            root = getattr(pipe, component)
            for name, delta in layer_shifts.items():
                weight = root.get_submodule(name).weight
                weight.copy_(shifted_weight(weight, delta.to(weight.device)))
    for token_file in token_files:
        load_embedding(pipe, token_file)


class SVDiff(PersonalizationModule):
    """Trains the spectral shifts of the UNet's (and optionally the text encoder's) weights."""

    families: ClassVar[frozenset[str]] = frozenset({"sd1"})
    family_refusals: ClassVar[dict[str, str]] = {
        "sdxl": "its shifts and loader are written and tested for SD 1.x's one text encoder",
        "flux": "its shifts and loader are written and tested for SD 1.x's UNet",
    }
    EXPORT_FORMATS: ClassVar[tuple[tuple[str, str], ...]] = (
        (SVDIFF_SHIFTS, Format.SVDIFF_SHIFTS),
        *TOKEN_FILE_FORMATS,
    )
    load_into = staticmethod(load_svdiff)  # the shifts into the weights, then each <token>

    def __init__(
        self,
        target_modules: list[str] | None = None,
        train_text_encoder: bool = False,
        cut_mix_probability: float = 0.0,
        unmix_weight: float = 0.0,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            target_modules: UNet layers that take spectral shifts, as regular expressions a
                layer name matches in full or in its tail after a dot (``to_k``,
                ``attn2\\.to_[kv]``); None: every Linear and Conv2d, as the paper. Each must
                select Linear / Conv2d layers only.
            train_text_encoder: also shift every Linear of the text encoder (learning-rate
                group ``text_encoder_spectral_shifts``; the UNet's is ``spectral_shifts``).
            cut_mix_probability: chance that an instance sample becomes a stitched two-concept
                sample (Cut-Mix, section 3.3); needs two or more concepts. 0: off.
            unmix_weight: weight of the Unmix regularizer on the stitched samples' cross-
                attention maps (logged as ``train/loss/unmix``); needs Cut-Mix. 0: off.
        """
        kwargs.setdefault("train_tokens", False)
        concepts = kwargs.get("concepts") or []
        if not 0.0 <= cut_mix_probability <= 1.0:
            raise ValueError(
                f"cut_mix_probability is a chance in [0, 1] (0: off), got {cut_mix_probability}."
            )
        if unmix_weight < 0:
            raise ValueError(f"unmix_weight must be >= 0 (0: off), got {unmix_weight}.")
        if unmix_weight > 0 and cut_mix_probability == 0:
            raise ValueError(
                "unmix_weight > 0 regularizes the stitched samples of Cut-Mix, but "
                "cut_mix_probability is 0; set cut_mix_probability (e.g. 0.5) or unmix_weight: 0."
            )
        if cut_mix_probability > 0 and len(concepts) < 2:
            raise ValueError(
                f"cut_mix_probability > 0 stitches two concepts into one sample, but this run "
                f"has {len(concepts)} concept; add one (data.init_args.additional_concepts) or "
                "set cut_mix_probability: 0."
            )
        if cut_mix_probability > 0 and kwargs.get("background_loss_weight") is not None:
            raise ValueError(
                "cut_mix_probability > 0 stitches two photos into one sample, whose subject mask "
                "the masked loss does not have; set background_loss_weight: null or "
                "cut_mix_probability: 0."
            )
        memory = kwargs.get("memory")
        if memory is not None and memory.quantize_denoiser is not None:
            raise ValueError(
                "memory.quantize_denoiser replaces the UNet's Linear layers, whose weights SVDiff "
                "decomposes; leave quantize_denoiser out with SVDiff."
            )
        if memory is not None and memory.gradient_checkpointing and unmix_weight > 0:
            raise ValueError(
                "unmix_weight > 0 reads the cross-attention maps beside each layer, which "
                "gradient checkpointing would recompute without them; turn off "
                "memory.gradient_checkpointing or set unmix_weight: 0."
            )
        super().__init__(**kwargs)
        self.target_modules = None if target_modules is None else list(target_modules)
        self.train_text_encoder = train_text_encoder
        self.cut_mix_probability, self.unmix_weight = cut_mix_probability, unmix_weight
        names = matching_layers(self.unet, self.target_modules, "model.init_args.target_modules")
        add_spectral_shifts(self.unet, names)
        if train_text_encoder:
            encoder_layers = matching_layers(self.text_encoder, None, "the text encoder")
            add_spectral_shifts(self.text_encoder, encoder_layers)
        self._partner_photos: list[list[torch.Tensor]] | None = None
        self._stitched: list[Stitched] = []
        self._unmix: torch.Tensor | None = None

    # ----- what trains and how it is saved ----------------------------------------------------
    def shifted_components(self) -> dict[str, nn.Module]:
        """The components with spectral shifts, by their pipeline attribute name."""
        components: dict[str, nn.Module] = {"unet": self.unet}
        if self.train_text_encoder:
            components["text_encoder"] = self.text_encoder
        return components

    def trainable_groups(self) -> dict[str, list[nn.Parameter]]:
        groups = super().trainable_groups()
        groups["spectral_shifts"] = [s.delta for s in spectral_shifts(self.unet).values()]
        if self.train_text_encoder:
            shifts = spectral_shifts(self.text_encoder).values()
            groups["text_encoder_spectral_shifts"] = [s.delta for s in shifts]
        return groups

    def export(self, folder: Path) -> list[Path]:
        """``svdiff_spectral_shifts.safetensors`` and one ``<token>.safetensors`` per concept."""
        folder.mkdir(parents=True, exist_ok=True)
        shifts = {
            f"{component}.{name}": shift.delta.detach().float().cpu().contiguous()
            for component, root in self.shifted_components().items()
            for name, shift in spectral_shifts(root).items()
        }
        metadata = {
            "format": Format.SVDIFF_SHIFTS,
            "base_model": str(self.pretrained_model_name_or_path),
            "components": json.dumps(sorted(self.shifted_components())),
        }
        path = folder / SVDIFF_SHIFTS
        save_file(shifts, str(path), metadata=metadata)
        paths = {c.token: folder / f"{c.token}.safetensors" for c in self.concepts}
        return [path, *self.export_token_embeddings(paths)]

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        """Sampling reads each shifted weight once per generation, not once per UNet call."""
        with parametrize.cached():
            return super().generate(*args, **kwargs)

    # ----- Cut-Mix-Unmix ----------------------------------------------------------------------
    def attach_datamodule(self, datamodule: Any, stage: str = "fit") -> None:
        """Cut-Mix reads the other concepts' training photos from the DataModule."""
        super().attach_datamodule(datamodule, stage)
        if stage == "fit" and self.cut_mix_probability > 0:
            self._partner_photos = self._read_partner_photos(datamodule)

    def _read_partner_photos(self, datamodule: Any) -> list[list[torch.Tensor]]:
        images = getattr(datamodule, "images", None)
        resolution = getattr(datamodule, "resolution", None)
        if images is None or not isinstance(resolution, int):
            raise ValueError(
                "cut_mix_probability > 0 reads each concept's photos from the DataModule "
                "(datamodules.PersonalizationDataModule); train with it."
            )
        chosen = getattr(datamodule, "training_photos", None) or [
            list(range(len(photos))) for photos in images
        ]
        photos = []
        for concept, indices in zip(images, chosen):
            squares = []
            for index in indices:
                scaled = resize_short_side(concept[index].convert("RGB"), resolution)
                left = (scaled.width - resolution) // 2
                top = (scaled.height - resolution) // 2
                square = scaled.crop((left, top, left + resolution, top + resolution))
                squares.append(to_tensor(square))
            photos.append(squares)
        return photos

    def cut_mix(self, batch: dict[str, Any]) -> tuple[dict[str, Any], list[Stitched]]:
        """The batch with some instance samples replaced by stitched two-concept samples.

        Each sample's draw (whether, which concept and photo, which side) comes from its own
        stream, keyed by seed, step and ``sample_key``, so a resumed or DDP run stitches the
        same samples."""
        if self._partner_photos is None:
            raise ValueError(
                "cut_mix_probability > 0 needs the other concepts' photos, read when training "
                "starts with a DataModule (trainer.fit(model, datamodule=...))."
            )
        count = len(batch["prompts"])
        keys = batch.get("sample_key")
        keys = list(range(count)) if keys is None else [int(k) for k in keys]
        pixels, masks = batch["pixel_values"].clone(), batch["loss_mask"].clone()
        prompts, cache_keys = list(batch["prompts"]), list(batch.get("cache_key") or [""] * count)
        stitched = []
        for row in range(count):
            rng = random.Random(f"{self.seed}/svdiff-cut-mix/{self.global_step}/{keys[row]}")
            if rng.random() >= self.cut_mix_probability:
                continue
            own = int(batch["concept_index"][row])
            partner = rng.choice([c for c in range(len(self.concepts)) if c != own])
            photo = rng.randrange(len(self._partner_photos[partner]))
            own_left = rng.random() < 0.5
            partner_pixels = self._partner_photos[partner][photo]
            size = tuple(pixels.shape[-2:])
            if tuple(partner_pixels.shape[-2:]) != size:  # an aspect bucket's shape
                partner_pixels = cover_crop(partner_pixels[None], size)[0]
            partner_pixels = partner_pixels.to(pixels)
            ones = torch.ones_like(masks[row])
            if own_left:
                left, right = own, partner
                pixels[row] = stitch(batch["pixel_values"][row], partner_pixels)
                masks[row] = stitch(batch["loss_mask"][row], ones)
            else:
                left, right = partner, own
                pixels[row] = stitch(partner_pixels, batch["pixel_values"][row])
                masks[row] = stitch(ones, batch["loss_mask"][row])
            prompts[row] = cut_mix_prompt(self.concepts[left], self.concepts[right])
            own_key = cache_keys[row]  # deterministic pixels keep a latent-cache key
            mixed_key = f"cut-mix/{own_key}/{partner}/{photo}/{int(own_left)}"
            cache_keys[row] = mixed_key if own_key else ""
            stitched.append(Stitched(row, left, right))
        mixed = {**batch, "pixel_values": pixels, "loss_mask": masks, "prompts": prompts}
        if "cache_key" in batch:
            mixed["cache_key"] = cache_keys
        return mixed, stitched

    def concept_token_ids(self, concept_index: int) -> list[int]:
        """The tokenizer ids of one concept's token(s)."""
        token = self.concepts[concept_index].token
        names = vector_token_names(token, self.concept_tokens.num_vectors)
        return list(self.tokenizer.convert_tokens_to_ids(names))

    def compute_losses(self, batch: dict[str, Any], draws: SampleDraws) -> dict[str, Any]:
        """The base's losses on the (cut-mixed) batch, plus ``unmix_weight`` x Unmix."""
        self._stitched, self._unmix = [], None
        if self.cut_mix_probability > 0 and self.training:
            batch, self._stitched = self.cut_mix(batch)
        try:
            losses = super().compute_losses(batch, draws)
            unmix = self._unmix
        finally:
            self._stitched, self._unmix = [], None
        if self.unmix_weight > 0:
            unmix = unmix if unmix is not None else losses["total"].new_zeros(())
            losses["parts"]["unmix"] = unmix
            losses["total"] = losses["total"] + self.unmix_weight * unmix
        return losses

    def denoise(
        self,
        batch: dict[str, Any],
        draws: SampleDraws,
        with_prior: bool = True,
        text_requests: dict[int, list[TextRequest]] | None = None,
        timesteps: torch.Tensor | None = None,
    ) -> StepRecord:
        """The base's step; on a batch with stitched samples (and Unmix on), its one UNet call
        also records their cross-attention maps, and the Unmix loss is computed from them."""
        rows = [s.row for s in self._stitched] if self.unmix_weight > 0 else []
        if not rows or self._unmix is not None:
            return super().denoise(batch, draws, with_prior, text_requests, timesteps)
        layers = self.family.attention_layers(self.unet)
        with CrossAttentionRecorder(layers, rows) as recorder:
            record = super().denoise(batch, draws, with_prior, text_requests, timesteps)
        ids = record.input_ids[rows]
        left = torch.zeros_like(ids, dtype=torch.bool)
        right = torch.zeros_like(left)
        for position, item in enumerate(self._stitched):
            for mask, concept in ((left, item.left), (right, item.right)):
                concept_ids = ids.new_tensor(self.concept_token_ids(concept))
                mask[position] = torch.isin(ids[position], concept_ids)
        self._unmix = unmix_loss(recorder.maps, tuple(record.latents.shape[-2:]), left, right)
        return record
