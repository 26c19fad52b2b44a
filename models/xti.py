"""XTI / P+ (Voynov et al. 2023): a concept token per UNet cross-attention layer.

Only the per-layer token vectors train (16 layers x num_vectors for SD 1.5; on SDXL 11 layers,
one per spatial transformer, in both text encoders). The vectors live in each encoder's
concept-token table (``ConceptTokens``), one block of rows per layer; the mechanics are in
`models.xti_layers`. ``encode_text`` returns the packed per-layer states as
``layer_states`` (what the UNet is given, via ``TextEncoding.conditioning``) and, as
``hidden_states``, the states of one layer, ``text_layer``: by default the middle block's,
the coarse layer P+ finds to carry the concept's semantics, for losses on the text side.
On SDXL the UNet's one pooled text embedding (a per-image condition, not a per-layer one) is
``text_layer``'s too.

Export: ``xti_embeds.safetensors``, ``{token: (n_layers, num_vectors, dim)}`` with the layer
names in its metadata; on SDXL one tensor per encoder, ``clip_l/<token>`` and
``clip_g/<token>`` (the encoders named as SDXL embeddings name them). diffusers has no loader
for it: `load_xti` installs it into a ``StableDiffusionPipeline`` or
``StableDiffusionXLPipeline``, and `xti_pipeline` builds one that generates from plain prompts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from backbones import choose_family, family_of_pipeline, pipeline_text_parts
from backbones.base import BackboneFamily
from core.concept import vector_token_names
from exports.manifest import Format, not_loadable
from models.base import PersonalizationModule
from models.xti_layers import (
    LAYER_SUFFIX,
    LayerTokenBlocks,
    check_layers,
    cross_attention_layers,
    default_text_layer,
    encode_per_layer,
    install_processors,
    install_token_copies,
    pack,
    reserve_layer_tokens,
)
from pretrained.resolve import resolve_pretrained
from step.encoding import TextEncoding, tokenize_padded

XTI_EMBEDS = "xti_embeds.safetensors"
# The text encoders' names in an SDXL export, first encoder first (A1111 / ComfyUI's SDXL
# embedding keys); an SD 1.x export keys its one encoder's tensors by token alone.
SDXL_ENCODERS = ("clip_l", "clip_g")


def read_xti(path: str | Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The first text encoder's vectors ``{token: (n_layers, num_vectors, dim)}`` and the
    layer names (`read_xti_encoders`: every encoder's)."""
    per_encoder, layers, _ = read_xti_encoders(path)
    return per_encoder[0], layers


def read_xti_encoders(
    path: str | Path,
) -> tuple[list[dict[str, torch.Tensor]], list[str], int | None]:
    """Each text encoder's ``{token: (n_layers, num_vectors, dim)}``, the layer names, and the
    ``text_layer`` it trained with (whose pooled text SDXL reads; None in older exports)."""
    path = Path(path)
    if path.is_dir():
        path = path / XTI_EMBEDS
    if not path.is_file():
        raise FileNotFoundError(f"No XTI embeddings at {str(path)!r} (an {XTI_EMBEDS} file).")
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
        if "xti_layers" not in metadata:
            raise ValueError(
                f"{str(path)!r} has no 'xti_layers' metadata; it is not an XTI export "
                "(Textual Inversion files load with pipe.load_textual_inversion)."
            )
        encoders = json.loads(metadata.get("xti_encoders", "[]"))
        keys = list(handle.keys())
        tokens = json.loads(metadata.get("xti_tokens", "[]")) or keys
        prefixes = [f"{name}/" for name in encoders] or [""]
        vectors = [{t: handle.get_tensor(prefix + t) for t in tokens} for prefix in prefixes]
    text_layer = metadata.get("xti_text_layer")
    layer = None if text_layer is None else int(text_layer)
    return vectors, json.loads(metadata["xti_layers"]), layer


class XTI(PersonalizationModule):
    """Learns ``num_vectors`` vectors per concept for each cross-attention layer."""

    EXPORT_FORMATS: ClassVar[tuple[tuple[str, str], ...]] = ((XTI_EMBEDS, Format.XTI_EMBEDDINGS),)
    families: ClassVar[frozenset[str]] = frozenset({"sd1", "sdxl"})
    family_refusals: ClassVar[dict[str, str]] = {
        "flux": "FLUX's transformer reads one text sequence in every block, through joint "
        "attention: there is no per-layer text input for P+'s per-layer tokens"
    }
    LOAD_INSTEAD: ClassVar[str] = (
        "its per-layer tokens need XTI's own prompt encoding; models.xti.xti_pipeline(<base "
        "model>, folder) builds a pipeline that generates from plain prompts (or load_xti(pipe, "
        "folder), then pipe(prompt_embeds=xti_prompt_embeds(pipe, prompts)))"
    )

    def __init__(
        self, text_layer: int | None = None, init_embeddings: str | None = None, **kwargs: Any
    ) -> None:
        """
        Args:
            text_layer: whose states ``encode_text(...).hidden_states`` returns (the states
                text-side losses see); None: the middle block's layer.
            init_embeddings: an ``xti_embeds.safetensors`` (or its folder) to start from;
                it must come from a UNet with the same cross-attention layers.
        """
        kwargs.setdefault("train_tokens", True)
        if not kwargs["train_tokens"]:
            raise ValueError(
                f"{type(self).__name__} trains the concept tokens' copies; set train_tokens: true."
            )
        super().__init__(**kwargs)
        self.layer_names = self.variant_names()
        num_layers = len(self.layer_names)
        names = [n for c in self.concepts for n in vector_token_names(c.token, self.num_vectors)]
        for name, tokens in zip(self.family.tokenizer_names, self.encoder_concept_tokens):
            reserve_layer_tokens(getattr(self, name), names, num_layers, self.COPY_SUFFIX)
            # Layer-major rows: layer l's copy of token entry k is row l * K + k; every layer
            # starts from the initializer word, as Textual Inversion does.
            vectors = tokens.embedding.vectors.detach().repeat(num_layers, 1)
            tokens.embedding.vectors = nn.Parameter(vectors)
        first_id = self.concept_tokens.embedding.base_vocab_size
        self.blocks = LayerTokenBlocks([(first_id, len(names))])
        self.route_variants()
        if text_layer is None:
            text_layer = default_text_layer(self.layer_names)
        if not 0 <= text_layer < num_layers:
            raise ValueError(f"text_layer must be in [0, {num_layers}), got {text_layer}.")
        self.text_layer = text_layer
        if init_embeddings is not None:
            self.load_embeddings(init_embeddings)

    # ----- what the token copies condition (ProSpect overrides both: stages of the schedule) --
    COPY_SUFFIX: ClassVar[str] = LAYER_SUFFIX

    def variant_names(self) -> list[str]:
        """One name per copy of the concept tokens: P+'s cross-attention layers."""
        names = cross_attention_layers(self.unet)
        if not names:
            raise ValueError("This UNet has no cross-attention layers; XTI needs them.")
        return names

    def route_variants(self) -> None:
        """Make each UNet layer read its own copy's states from the packed conditioning."""
        install_processors(self.unet, self.layer_names, self.tokenizer.model_max_length)

    @property
    def num_vectors(self) -> int:
        return self.concept_tokens.num_vectors

    def layer_vectors(self, concept_index: int, encoder: int = 0) -> torch.Tensor:
        """One concept's vectors in one text encoder, (n_layers, num_vectors, dim)."""
        table = self.encoder_concept_tokens[encoder].embedding.vectors
        per_layer = table.view(len(self.layer_names), -1, table.shape[-1])
        start = concept_index * self.num_vectors
        return per_layer[:, start : start + self.num_vectors]

    def encode_text(self, prompts: list[str]) -> TextEncoding:
        """Per-layer states (``layer_states``, packed) and ``text_layer``'s (``hidden_states``)."""
        input_ids = self.tokenize(prompts)
        # The family's text path without `encode_token_ids`' remap to text_layer's copies.
        encode = super().encode_token_ids
        layers = encode_per_layer(encode, input_ids, self.blocks, len(self.layer_names))
        return with_layer_states(layers, self.text_layer)

    def encode_token_ids(
        self, input_ids: torch.Tensor, extra_vectors: torch.Tensor | None = None
    ) -> TextEncoding:
        """Token-id path (MLM) through ``text_layer``'s copy of each token, as `encode_text`'s
        ``hidden_states`` are, so every text-side loss trains the same layer's vector."""
        return super().encode_token_ids(
            self.blocks.for_layer(input_ids, self.text_layer), extra_vectors
        )

    def encode_token_variants(
        self, input_ids: torch.Tensor, extra_vectors: torch.Tensor | None = None
    ) -> TextEncoding:
        """Every layer's copy of the tokens, layer-major (rows l * B + i), in one call."""
        layers = range(len(self.layer_names))
        variants = [self.blocks.for_layer(input_ids, layer) for layer in layers]
        # The base's lookup: layer l's ids read layer l's rows (no remap to text_layer).
        return super().encode_token_ids(torch.cat(variants), extra_vectors)

    def load_embeddings(self, path: str | Path) -> None:
        """Start from saved per-layer vectors (same layers, tokens and num_vectors)."""
        per_encoder, layers, _ = read_xti_encoders(path)
        check_encoder_count(len(per_encoder), self.family, repr(str(path)))
        check_layers(layers, self.layer_names, repr(str(path)))
        for encoder, vectors in enumerate(per_encoder):
            self.copy_saved_vectors(vectors, encoder, path)

    def copy_saved_vectors(
        self, vectors: dict[str, torch.Tensor], encoder: int, path: str | Path
    ) -> None:
        """Each concept's saved copies (n_copies, num_vectors, dim) into its rows of one
        encoder; a missing token or another shape is refused, naming ``path``."""
        with torch.no_grad():
            for index, concept in enumerate(self.concepts):
                target = self.layer_vectors(index, encoder)
                saved = vectors.get(concept.token)
                if saved is None or saved.shape != target.shape:
                    found = None if saved is None else tuple(saved.shape)
                    raise ValueError(
                        f"{str(path)!r} holds no {concept.token!r} of shape "
                        f"{tuple(target.shape)} (found {found}); tokens {sorted(vectors)}."
                    )
                target.copy_(saved)

    def export(self, folder: Path) -> list[Path]:
        """``xti_embeds.safetensors``: every concept's per-layer vectors and the layer names."""
        folder.mkdir(parents=True, exist_ok=True)
        count = len(self.encoder_concept_tokens)
        prefixes = [f"{name}/" for name in SDXL_ENCODERS] if count > 1 else [""]
        tensors = {
            prefix + c.token: self.layer_vectors(i, encoder).detach().float().cpu().contiguous()
            for encoder, prefix in enumerate(prefixes)
            for i, c in enumerate(self.concepts)
        }
        metadata = {
            "xti_layers": json.dumps(self.layer_names),
            "xti_tokens": json.dumps([c.token for c in self.concepts]),
            "xti_text_layer": str(self.text_layer),
        }
        if count > 1:
            metadata["xti_encoders"] = json.dumps(list(SDXL_ENCODERS))
        save_file(tensors, str(folder / XTI_EMBEDS), metadata=metadata)
        return [folder / XTI_EMBEDS]

    @classmethod
    def load_into(cls, pipeline: StableDiffusionPipeline, folder: str | Path) -> None:
        """Refused (`NotLoadableError`): a plain pipeline's prompts cannot reach the per-layer
        tokens; the message names `xti_pipeline` and `load_xti`."""
        raise not_loadable(cls.__name__, folder, cls.LOAD_INSTEAD)


def with_layer_states(layers: list[TextEncoding], text_layer: int) -> TextEncoding:
    """One encoding of every layer's states (packed, what the UNet reads) whose own states and
    pooled outputs are ``text_layer``'s."""
    chosen = layers[text_layer]
    return TextEncoding(
        chosen.hidden_states,
        chosen.input_ids,
        layer_states=pack(torch.stack([layer.hidden_states for layer in layers])),
        text_embeds=chosen.text_embeds,
        clip_pooled=chosen.clip_pooled,
        clip_states=chosen.clip_states,
    )


def check_encoder_count(count: int, family: BackboneFamily, source: str) -> None:
    """An export's vectors fit a family with as many text encoders as it has tensors for."""
    wanted = len(family.text_encoder_names)
    if count != wanted:
        raise ValueError(
            f"XTI embeddings {source} hold vectors for {count} text encoder(s), but this "
            f"{family.display_name} model has {wanted}; XTI embeddings load only into the "
            "family they were learned on."
        )


# ----- diffusers: loading and generating ----------------------------------------------------
def load_xti(
    pipe: StableDiffusionPipeline | StableDiffusionXLPipeline, path: str | Path
) -> list[str]:
    """Install an XTI export into a pipeline: tokens, per-layer rows and attention processors.

    Generate with `xti_prompt_embeds` / `xti_text` (any pipeline) or build the XTI pipeline
    of its family (plain prompts). Returns the tokens loaded; raises before touching the
    pipeline if the export's layers or text encoders do not match it.
    """
    per_encoder, layers, text_layer = read_xti_encoders(path)
    source = repr(str(path))
    check_encoder_count(len(per_encoder), family_of_pipeline(pipe), source)
    check_layers(layers, cross_attention_layers(pipe.unet), source)
    layers = cross_attention_layers(pipe.unet)
    first = install_token_copies(pipeline_text_parts(pipe), per_encoder, len(layers))
    blocks = getattr(pipe, "xti_blocks", None) or LayerTokenBlocks()
    blocks.blocks.append((first, sum(v.shape[1] for v in per_encoder[0].values())))
    pipe.xti_blocks, pipe.xti_layers = blocks, layers
    pipe.xti_text_layer = default_text_layer(layers) if text_layer is None else text_layer
    install_processors(pipe.unet, layers, pipe.tokenizer.model_max_length)
    return list(per_encoder[0])


def xti_text(pipe: Any, prompts: list[str], text_layer: int | None = None) -> TextEncoding:
    """The prompts' XTI encoding in a pipeline `load_xti` prepared: ``conditioning`` the packed
    per-layer states (B, n_layers * L, D), ``text_embeds`` SDXL's pooled text (``text_layer``'s;
    None: the one the export trained with)."""
    blocks = getattr(pipe, "xti_blocks", None)
    if blocks is None:
        raise ValueError("No XTI embeddings in this pipeline; call load_xti(pipe, path) first.")
    family = family_of_pipeline(pipe)
    parts = pipeline_text_parts(pipe)
    expanded = pipe.maybe_convert_prompt(list(prompts), pipe.tokenizer)
    input_ids = tokenize_padded(pipe.tokenizer, expanded, parts[0][1].device)
    encoders = [encoder for _, encoder in parts]
    pad_ids = [tokenizer.pad_token_id for tokenizer, _ in parts]

    def encode(ids: torch.Tensor) -> TextEncoding:
        return family.encode_ids(encoders, ids, pad_ids, pipe.tokenizer.eos_token_id)

    layer = pipe.xti_text_layer if text_layer is None else text_layer
    with torch.no_grad():
        layers = encode_per_layer(encode, input_ids, blocks, len(pipe.xti_layers))
    return with_layer_states(layers, layer)


def xti_prompt_embeds(pipe: StableDiffusionPipeline, prompts: list[str]) -> torch.Tensor:
    """Packed per-layer states (B, n_layers * L, D): pass as ``prompt_embeds`` (and the
    negative prompts' as ``negative_prompt_embeds``) to a pipeline `load_xti` prepared
    (on SDXL, `xti_text`'s ``text_embeds`` as the pooled ones too)."""
    return xti_text(pipe, prompts).conditioning


def _prompt_list(prompt: str | list[str] | None, count: int | None = None) -> list[str]:
    if prompt is None or isinstance(prompt, str):
        return [prompt or ""] * (count or 1)
    return list(prompt)


class XTIStableDiffusionPipeline(StableDiffusionPipeline):
    """A Stable Diffusion pipeline whose prompts go through the XTI per-layer encoding."""

    def encode_prompt(
        self,
        prompt: str | list[str] | None,
        device: torch.device,
        num_images_per_prompt: int,
        do_classifier_free_guidance: bool,
        negative_prompt: str | list[str] | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        lora_scale: float | None = None,
        clip_skip: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if clip_skip is not None:
            raise ValueError("XTIStableDiffusionPipeline does not support clip_skip.")
        if prompt_embeds is None:
            prompt_embeds = xti_prompt_embeds(self, _prompt_list(prompt))
        if do_classifier_free_guidance and negative_prompt_embeds is None:
            negatives = _prompt_list(negative_prompt, prompt_embeds.shape[0])
            negative_prompt_embeds = xti_prompt_embeds(self, negatives)
        # The parent repeats both per image and casts them; given embeddings, it encodes nothing.
        return super().encode_prompt(
            None,
            device,
            num_images_per_prompt,
            do_classifier_free_guidance,
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
            lora_scale=lora_scale,
        )


class XTIStableDiffusionXLPipeline(StableDiffusionXLPipeline):
    """An SDXL pipeline whose prompts go through the XTI per-layer encoding (both encoders;
    the pooled text from the layer the export trained with, ``text_layer``)."""

    def encode_prompt(  # type: ignore[override]
        self,
        prompt: str | list[str] | None,
        prompt_2: str | list[str] | None = None,
        device: torch.device | None = None,
        num_images_per_prompt: int = 1,
        do_classifier_free_guidance: bool = True,
        negative_prompt: str | list[str] | None = None,
        negative_prompt_2: str | list[str] | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        pooled_prompt_embeds: torch.Tensor | None = None,
        negative_pooled_prompt_embeds: torch.Tensor | None = None,
        lora_scale: float | None = None,
        clip_skip: int | None = None,
    ) -> tuple[torch.Tensor, ...]:
        if clip_skip is not None or prompt_2 is not None or negative_prompt_2 is not None:
            raise ValueError(
                "XTIStableDiffusionXLPipeline reads one prompt for both encoders (the per-layer "
                "tokens are in both); it takes no prompt_2 / negative_prompt_2 / clip_skip."
            )
        if prompt_embeds is None:
            text = xti_text(self, _prompt_list(prompt))
            prompt_embeds, pooled_prompt_embeds = text.conditioning, text.text_embeds
        # With no negative prompt, SDXL's config zeroes the negative condition (the parent does
        # that for any length); otherwise the negatives go through the same per-layer path.
        zeroed = negative_prompt is None and self.config.force_zeros_for_empty_prompt
        if do_classifier_free_guidance and negative_prompt_embeds is None and not zeroed:
            negatives = _prompt_list(negative_prompt, prompt_embeds.shape[0])
            text = xti_text(self, negatives)
            negative_prompt_embeds = text.conditioning
            negative_pooled_prompt_embeds = text.text_embeds
        return super().encode_prompt(
            None,
            device=device,
            num_images_per_prompt=num_images_per_prompt,
            do_classifier_free_guidance=do_classifier_free_guidance,
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
            pooled_prompt_embeds=pooled_prompt_embeds,
            negative_pooled_prompt_embeds=negative_pooled_prompt_embeds,
            lora_scale=lora_scale,
        )


def xti_pipeline(
    pretrained_model_name_or_path: str, embeddings: str | Path, **kwargs: Any
) -> XTIStableDiffusionPipeline | XTIStableDiffusionXLPipeline:
    """Load the base model (hub id, folder, ``tiny-sd`` or ``tiny-sdxl``) as its family's XTI
    pipeline and install XTI embeddings."""
    family, name = choose_family(pretrained_model_name_or_path)
    if family.name == "sdxl":
        pipe: Any = XTIStableDiffusionXLPipeline.from_pretrained(resolve_pretrained(name), **kwargs)
    else:
        kwargs.setdefault("safety_checker", None)
        pipe = XTIStableDiffusionPipeline.from_pretrained(resolve_pretrained(name), **kwargs)
    load_xti(pipe, embeddings)
    return pipe
