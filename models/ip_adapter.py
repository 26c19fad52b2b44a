"""IP-Adapter (Ye et al. 2023), IP-Adapter-Plus form: zero-shot personalization from one image.

A frozen CLIP image encoder reads the reference image; its penultimate hidden states go through
a trained Perceiver resampler to 16 image tokens (ACCORD's "Q-former", models/ip_adapter_layers.py),
which every cross-attention layer reads through its own new K_ip / V_ip beside the text's K / V
(diffusers' ``IPAdapterAttnProcessor2_0``). Only the resampler and the K_ip / V_ip train; the
UNet, text encoder, VAE and image encoder stay bitwise frozen. At test time a new face goes in
and images come out, no tuning: ``generate(prompts, reference_image=face)``.

Training (IP-Adapter's recipe) runs across many subjects: every sample is conditioned on its own
reference, by default the sample's own training image (``reference: target``: FFHQ-style data,
one face per image, a whole folder as one "concept"), or another photo of the same subject
(``reference: reference_image``: the DataModule's ``reference_pixel_values``, several photos per
subject as VisualEncoder trains). Text, image and both are dropped for 5% of the samples each
(the image as an all-zero CLIP input, what diffusers feeds for the unconditional branch), from
a draw seeded by the sample's key (step/draws.py), so a resumed run drops the same samples.

Text: the concept token is read as nothing ("a photo of a <v1> person" encodes as "a photo of a
person"): the subject comes only from the image, as in IP-Adapter, and the exported adapter
needs no token in a diffusers pipeline.

ACCORD's losses (Table 4, "IP-Adapter w/ Ours"; models/ip_adapter_losses.py): the image is the
concept c_p. DDLoss's e(cp, cg) and e(cp) keep the sample's image tokens, its e(cg) and e(empty)
(the frozen prior, no gradient) run without the image (the zero-image tokens). PDLoss's f_p is
the mean of the sample's 16 image tokens taken through CLIP's text projection: the tokens live
where the text encoder's states do (K_ip / V_ip start as the text K / V), so the projection
puts them in the CLIP space f_g and f_s are in, and the gradient reaches the resampler. (ACCORD
also feeds the tokens to the text cross-attention; this is the published IP-Adapter, whose
export diffusers loads.)

Export: ``ip_adapter.safetensors`` with ``image_proj.*`` and ``ip_adapter.*`` keys in the
original checkpoint layout, which diffusers' ``pipe.load_ip_adapter`` converts; the image
encoder is named in the file's metadata (``load_into`` installs both).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from transformers import CLIPImageProcessor

from components.text_projection import project
from core.images import cover_crop
from exports.manifest import Format
from generation.zero_shot import ZeroShotTestMixin
from models.base import PersonalizationModule
from models.ip_adapter_layers import Resampler, install_ip_processors, ip_attention_state
from models.subject_encoder import chosen_image_encoder, load_image_encoder
from step.draws import SampleDraws

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline

IP_ADAPTER_WEIGHTS = "ip_adapter.safetensors"
REFERENCE_KEY = "reference_pixel_values"
DROPOUT_SALT = 11  # SampleDraws salt of the text / image dropout draw (0-2: base, 5-6: MLM)
Reference = Literal["target", "reference_image"]


class IPAdapter(ZeroShotTestMixin, PersonalizationModule):
    """Trains the image projection and the K_ip / V_ip of every cross-attention layer."""

    families: ClassVar[frozenset[str]] = frozenset({"sd1"})
    EXPORT_FORMATS: ClassVar[tuple[tuple[str, str], ...]] = (
        (IP_ADAPTER_WEIGHTS, Format.IP_ADAPTER),
    )

    def __init__(
        self,
        image_encoder_name_or_path: str | None = None,
        image_encoder_subfolder: str | None = None,
        num_tokens: int = 16,
        resampler_width: int | None = None,
        scale: float = 1.0,
        reference: Reference = "target",
        text_drop_rate: float = 0.05,
        image_drop_rate: float = 0.05,
        both_drop_rate: float = 0.05,
        train_tokens: bool = False,
        test_references: str | None = None,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            image_encoder_name_or_path: a CLIP vision model (with projection) or CLIPModel;
                None: tiny-clip for tiny-sd, else IP-Adapter's SD 1.5 encoder (ViT-H/14).
            image_encoder_subfolder: subfolder of it that holds the model.
            num_tokens: image tokens (IP-Adapter-Plus: 16).
            resampler_width: the resampler's inner width, a multiple of 64 (None: the UNet's
                cross-attention width, 768 on SD 1.5 as IP-Adapter-Plus; at least 64).
            scale: weight of the image attention (diffusers' ``set_ip_adapter_scale``).
            reference: ``target``: each sample's own image is its reference (one face per
                image); ``reference_image``: another photo of the sample's subject.
            text_drop_rate, image_drop_rate, both_drop_rate: shares of samples trained with
                the empty prompt, with the zero image, with both (IP-Adapter: 5% each).
            train_tokens: must stay false: the subject comes from the image.
            test_references: a folder of held-out reference images (faces) ``test`` generates
                from, each prompt once per reference, scored against it (None: the DataModule's
                held-out photos, data.init_args.validation_split; generation/zero_shot.py).
        """
        if train_tokens:
            raise ValueError("IPAdapter reads the subject from the image; set train_tokens: false.")
        if reference not in ("target", "reference_image"):
            raise ValueError(f"reference must be 'target' or 'reference_image', got {reference!r}.")
        rates = (text_drop_rate, image_drop_rate, both_drop_rate)
        if min(rates) < 0 or sum(rates) > 1:
            raise ValueError(f"drop rates {rates} must be >= 0 and sum to at most 1.")
        super().__init__(num_vectors=1, train_tokens=False, **kwargs)
        self.test_references = test_references
        if self.prior_loss_weight > 0:
            raise ValueError(
                "IPAdapter conditions every UNet row on a sample's image; prior preservation's "
                "class images have none. Set prior_loss_weight: 0."
            )
        chosen = chosen_image_encoder(
            self.pretrained_model_name_or_path, self.family.name,
            image_encoder_name_or_path, image_encoder_subfolder,
        )  # fmt: skip
        self.image_encoder_name_or_path, self.image_encoder_subfolder, encoder, mean, std = chosen
        self.image_encoder = encoder.requires_grad_(False).eval()
        self.image_size = int(encoder.config.image_size)
        # Not saved: they come with the image encoder, and checkpoints hold what trains.
        self.register_buffer("clip_mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("clip_std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.image_processor = CLIPImageProcessor(
            size=self.image_size, crop_size=self.image_size, image_mean=mean, image_std=std
        )  # diffusers' feature extractor for an IP-Adapter: PIL references are read the same
        cross_dim = int(self.unet.config.cross_attention_dim)
        width = resampler_width or max(64, cross_dim - cross_dim % 64)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)  # the same start in every run of a seed
            self.image_proj = Resampler(encoder.config.hidden_size, cross_dim, width, num_tokens)
        install_ip_processors(self.unet, num_tokens, scale)
        self.num_tokens, self.scale = num_tokens, scale
        self.reference: Reference = reference
        self.drop_rates = {"text": text_drop_rate, "image": image_drop_rate, "both": both_drop_rate}
        self._tokens: torch.Tensor | None = None  # (n, num_tokens, D): row j reads j mod n
        self._concept_tokens: torch.Tensor | None = None  # undropped, for PDLoss's f_p
        self._chosen: torch.Tensor | None = None  # set_reference's CLIP input
        self._preview_pixels: torch.Tensor | None = None  # first training image, for grids
        self.unet.register_forward_pre_hook(self._add_image_tokens, with_kwargs=True)

    # ----- what trains and how it is saved ----------------------------------------------------
    def frozen_components(self) -> list[nn.Module]:
        return [*super().frozen_components(), self.image_encoder]

    def trainable_groups(self) -> dict[str, list[nn.Parameter]]:
        attention = [p for name, p in self.unet.named_parameters() if ".processor.to_" in name]
        return {"image_proj": list(self.image_proj.parameters()), "ip_attention": attention}

    def batch_requirements(self) -> dict[str, frozenset[str]]:
        needs = dict(super().batch_requirements())
        if self.reference == "reference_image":
            needs["IPAdapter (reference: reference_image)"] = frozenset({REFERENCE_KEY})
        return needs

    def train(self, mode: bool = True) -> IPAdapter:
        super().train(mode)
        self.image_encoder.eval()  # frozen: always in eval mode
        return self

    def export(self, folder: Path) -> list[Path]:
        """``ip_adapter.safetensors``: ``image_proj.*`` and ``ip_adapter.*`` (load_ip_adapter's
        keys), fp32; the image encoder and settings in the metadata."""
        folder.mkdir(parents=True, exist_ok=True)
        weights = {f"image_proj.{k}": v for k, v in self.image_proj.state_dict().items()}
        weights |= {f"ip_adapter.{k}": v for k, v in ip_attention_state(self.unet).items()}
        weights = {k: v.detach().float().cpu().contiguous() for k, v in weights.items()}
        settings = {
            "image_encoder_name_or_path": self.image_encoder_name_or_path,
            "image_encoder_subfolder": self.image_encoder_subfolder,
            "num_tokens": self.num_tokens,
            "scale": self.scale,
        }
        path = folder / IP_ADAPTER_WEIGHTS
        save_file(weights, str(path), metadata={"ip_adapter": json.dumps(settings)})
        return [path]

    @classmethod
    def load_into(cls, pipeline: StableDiffusionPipeline, folder: str | Path) -> None:
        """Install the export's image encoder (named in its metadata) and the adapter."""
        load_ip_adapter_export(pipeline, folder)

    # ----- text: the subject comes from the image ---------------------------------------------
    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        """The prompts with the concept token(s) left out (see the module docstring)."""
        pattern = "|".join(re.escape(c.token) for c in self.concepts)
        return super().tokenize([" ".join(re.sub(pattern, " ", p).split()) for p in prompts])

    # ----- image tokens -----------------------------------------------------------------------
    def clip_input(self, pixels: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] (B, 3, H, W) -> the image encoder's normalised square input."""
        size = (self.image_size, self.image_size)
        pixels = pixels.float()
        if tuple(pixels.shape[-2:]) != size:
            pixels = cover_crop(pixels, size)
        return (((pixels + 1) / 2).clamp(0, 1) - self.clip_mean) / self.clip_std

    def image_tokens(self, clip_input: torch.Tensor) -> torch.Tensor:
        """(B, num_tokens, D) from normalised CLIP input; gradients reach the resampler only."""
        with torch.no_grad():
            encoder = self.image_encoder
            out = encoder(pixel_values=clip_input.to(encoder.dtype), output_hidden_states=True)
            states = out.hidden_states[-2].float()  # penultimate: IP-Adapter-Plus reads these
        return self.image_proj(states)

    def reference_tokens(self, image: Image.Image | torch.Tensor) -> torch.Tensor:
        """(1, num_tokens, D) of a reference: a PIL image (read as diffusers reads it) or one
        tensor image in [-1, 1]."""
        return self.image_tokens(self._as_clip_input(image))

    def unconditional_tokens(self) -> torch.Tensor:
        """(1, num_tokens, D): the all-zero CLIP input's tokens, "no image"."""
        size = self.image_size
        return self.image_tokens(torch.zeros(1, 3, size, size, device=self.device))

    def set_reference(self, image: Image.Image | torch.Tensor | None) -> None:
        """The image ``generate`` (and sample grids) use when none is passed."""
        self._chosen = None if image is None else self._as_clip_input(image).cpu()

    def _as_clip_input(self, image: Image.Image | torch.Tensor) -> torch.Tensor:
        if isinstance(image, Image.Image):
            pixels = self.image_processor(images=image, return_tensors="pt").pixel_values
            return pixels.to(self.device)
        pixels = image[None] if image.ndim == 3 else image
        if pixels.shape[0] != 1:
            raise ValueError(f"one reference image at a time, got {pixels.shape[0]}.")
        return self.clip_input(pixels.to(self.device))

    @contextmanager
    def conditioned_on(
        self, tokens: torch.Tensor, concept_tokens: torch.Tensor | None = None
    ) -> Iterator[None]:
        """Within the block, UNet row j reads image tokens ``tokens[j % len(tokens)]``;
        ``concept_tokens`` (default: ``tokens``) are PDLoss's."""
        previous = self._tokens, self._concept_tokens
        self._tokens = tokens
        self._concept_tokens = tokens if concept_tokens is None else concept_tokens
        try:
            yield
        finally:
            self._tokens, self._concept_tokens = previous

    @contextmanager
    def without_image(self) -> Iterator[None]:
        """Within the block every UNet row reads the "no image" tokens (DDLoss's cg, empty)."""
        with self.conditioned_on(self.unconditional_tokens(), self._concept_tokens):
            yield

    def concept_features(self, clip_model: str | None = None) -> torch.Tensor:
        """PDLoss's f_p (B, P): the mean of each sample's image tokens through CLIP's text
        projection (fp32), with gradient to the resampler."""
        if self._concept_tokens is None:
            raise ValueError("concept_features is only defined inside a training step.")
        return project(self.text_projection(clip_model), self._concept_tokens.mean(dim=1))

    def _current_tokens(self) -> torch.Tensor:
        if self._tokens is not None:
            return self._tokens
        pixels = self._chosen if self._chosen is not None else self._preview_pixels
        if pixels is None:
            raise ValueError(
                "IPAdapter has no reference image: pass generate(..., reference_image=image) or "
                "call set_reference(image) first."
            )
        return self.image_tokens(pixels.to(self.device))

    def _add_image_tokens(
        self, unet: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        """UNet pre-hook: the text states become (states, [image tokens]), what diffusers'
        IP-Adapter processors read; row j gets ``tokens[j % n]``."""
        positional = "encoder_hidden_states" not in kwargs
        states = args[2] if positional and len(args) > 2 else kwargs.get("encoder_hidden_states")
        if states is None or isinstance(states, tuple):
            return None  # diffusers' own IP-Adapter path (load_ip_adapter) already paired them
        tokens = self._current_tokens()
        rows, count = states.shape[0], tokens.shape[0]
        if count > 1 and rows % count:
            raise ValueError(
                f"{rows} UNet rows for {count} image-token sets: row j reads set j mod {count}, "
                "so stack conditions in whole multiples of the batch."
            )
        index = torch.arange(rows, device=tokens.device) % count
        pair = (states, [tokens[index].to(states.dtype)])
        if positional:
            return (*args[:2], pair, *args[3:]), kwargs
        return args, {**kwargs, "encoder_hidden_states": pair}

    # ----- training ---------------------------------------------------------------------------
    def dropout(self, draws: SampleDraws) -> tuple[torch.Tensor, torch.Tensor]:
        """(drop_text, drop_image) booleans (B,): one uniform draw per sample from its own
        generator (salt ``DROPOUT_SALT``): [0, image) image only, then text only, then both."""
        uniform = draws.with_salt(DROPOUT_SALT).each(
            lambda g: torch.rand(1, generator=g, device=g.device)
        )
        rates = self.drop_rates
        image, text, both = rates["image"], rates["text"], rates["both"]
        image_only = uniform < image
        text_only = (uniform >= image) & (uniform < image + text)
        dropped_both = (uniform >= image + text) & (uniform < image + text + both)
        return text_only | dropped_both, image_only | dropped_both

    def _reference_input(self, batch: dict[str, Any]) -> torch.Tensor:
        key = "pixel_values" if self.reference == "target" else REFERENCE_KEY
        if key not in batch:
            raise KeyError(
                f"IPAdapter (reference: {self.reference}) needs {key!r} in the batch; the "
                "DataModule builds it when the module's setup requests it."
            )
        return self.clip_input(batch[key])

    def compute_losses(self, batch: dict[str, Any], draws: SampleDraws) -> dict[str, Any]:
        clip_input = self._reference_input(batch)
        drop_text, drop_image = self.dropout(draws)
        dropped = torch.where(drop_image[:, None, None, None], 0.0, clip_input)
        tokens = self.image_tokens(dropped)
        concept = self.image_tokens(clip_input) if bool(drop_image.any()) else tokens
        prompts = ["" if d else p for p, d in zip(batch["prompts"], drop_text.tolist())]
        with self.conditioned_on(tokens, concept):
            return super().compute_losses({**batch, "prompts": prompts}, draws)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        with self.conditioned_on(self.image_tokens(self._reference_input(batch))):
            super().validation_step(batch, batch_idx)

    def setup(self, stage: str) -> None:
        """Also keep the first training image as the sample grids' reference."""
        super().setup(stage)
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer else None
        images = getattr(datamodule, "images", None)
        if images and images[0]:
            self._preview_pixels = self._as_clip_input(images[0][0].convert("RGB")).cpu()

    # ----- generation -------------------------------------------------------------------------
    @torch.no_grad()
    def generate(  # type: ignore[override]
        self,
        prompts: list[str],
        seed: int = 0,
        num_inference_steps: int = 25,
        guidance_scale: float = 6.0,
        resolution: int | None = None,
        negative_prompt: str = "",
        seeds: list[int] | None = None,
        scheduler: str | None = None,
        reference_image: Image.Image | torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The base's sampling with the image: ``reference_image`` (else set_reference's, else
        the first training image); the unconditional half reads the zero image, as diffusers'
        pipeline does with ``ip_adapter_image``."""
        if reference_image is not None:
            positive = self.reference_tokens(reference_image)
        else:
            positive = self._current_tokens()
        count = len(prompts)
        tokens = positive.expand(count, -1, -1)
        if guidance_scale > 1:  # diffusers' classifier-free batch: [negative..., positive...]
            tokens = torch.cat([self.unconditional_tokens().expand(count, -1, -1), tokens])
        with self.conditioned_on(tokens):
            return super().generate(
                prompts, seed, num_inference_steps, guidance_scale, resolution,
                negative_prompt, seeds, scheduler,
            )  # fmt: skip


# ----- loading an export ------------------------------------------------------------------------
def export_settings(folder: str | Path) -> dict[str, Any]:
    """The settings an export's metadata holds (image encoder, tokens, scale)."""
    path = Path(folder)
    path = path / IP_ADAPTER_WEIGHTS if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"{str(path)!r} does not exist: pass an IPAdapter export folder.")
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    if "ip_adapter" not in metadata:
        raise ValueError(f"{str(path)!r} is not an IPAdapter export (no settings).")
    return json.loads(metadata["ip_adapter"])


def load_ip_adapter_export(
    pipe: StableDiffusionPipeline,
    folder: str | Path,
    image_encoder_name_or_path: str | None = None,
    image_encoder_subfolder: str | None = None,
) -> StableDiffusionPipeline:
    """Give ``pipe`` the export's image encoder (or the one named) and feature extractor, then
    diffusers' ``load_ip_adapter``; generate with ``pipe(prompt, ip_adapter_image=face)``."""
    settings = export_settings(folder)
    name = image_encoder_name_or_path or settings["image_encoder_name_or_path"]
    subfolder = image_encoder_subfolder if image_encoder_name_or_path else settings[
        "image_encoder_subfolder"
    ]
    encoder, mean, std = load_image_encoder(name, subfolder)
    size = int(encoder.config.image_size)
    processor = CLIPImageProcessor(size=size, crop_size=size, image_mean=mean, image_std=std)
    encoder = encoder.to(device=pipe.device, dtype=pipe.unet.dtype)
    pipe.register_modules(image_encoder=encoder, feature_extractor=processor)
    folder = Path(folder)
    folder = folder if folder.is_dir() else folder.parent
    pipe.load_ip_adapter(
        str(folder), subfolder="", weight_name=IP_ADAPTER_WEIGHTS, image_encoder_folder=None
    )
    pipe.set_ip_adapter_scale(settings["scale"])
    return pipe
