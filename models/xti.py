"""XTI / P+ (Voynov et al. 2023): a concept token per UNet cross-attention layer.

Only the per-layer token vectors train (16 layers x num_vectors for SD 1.5). The vectors live
in the concept-token table (``ConceptTokens``), one block of rows per layer; the mechanics are
in `models.xti_layers`. ``encode_text`` returns the packed per-layer states as
``layer_states`` (what the UNet is given, via ``TextEncoding.conditioning``) and, as
``hidden_states``, the states of one layer, ``text_layer``: by default the middle block's,
the coarse layer P+ finds to carry the concept's semantics, for losses on the text side.

Export: ``xti_embeds.safetensors``, ``{token: (n_layers, num_vectors, dim)}`` with the layer
names in its metadata. diffusers has no loader for it: `load_xti` installs it into any
``StableDiffusionPipeline`` and `xti_pipeline` builds one that generates from plain prompts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import torch
from diffusers import StableDiffusionPipeline
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from core.concept import vector_token_names
from exports.manifest import Format, not_loadable
from models.base import PersonalizationModule
from models.xti_layers import (
    LayerTokenBlocks,
    check_layers,
    cross_attention_layers,
    default_text_layer,
    encode_per_layer,
    install_processors,
    pack,
    reserve_layer_tokens,
)
from pretrained.resolve import resolve_pretrained
from step.encoding import TextEncoding, tokenize_padded

XTI_EMBEDS = "xti_embeds.safetensors"


def read_xti(path: str | Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Token vectors ``{token: (n_layers, num_vectors, dim)}`` and the layer names."""
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
        tokens = json.loads(metadata.get("xti_tokens", "[]")) or list(handle.keys())
        vectors = {token: handle.get_tensor(token) for token in tokens}
    return vectors, json.loads(metadata["xti_layers"])


class XTI(PersonalizationModule):
    """Learns ``num_vectors`` vectors per concept for each cross-attention layer."""

    EXPORT_FORMATS: ClassVar[tuple[tuple[str, str], ...]] = ((XTI_EMBEDS, Format.XTI_EMBEDDINGS),)
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
            raise ValueError("XTI trains the per-layer concept tokens; set train_tokens: true.")
        super().__init__(**kwargs)
        self.layer_names = cross_attention_layers(self.unet)
        num_layers = len(self.layer_names)
        if num_layers == 0:
            raise ValueError("This UNet has no cross-attention layers; XTI needs them.")
        embedding = self.concept_tokens.embedding
        names = [n for c in self.concepts for n in vector_token_names(c.token, self.num_vectors)]
        reserve_layer_tokens(self.tokenizer, names, num_layers)
        self.blocks = LayerTokenBlocks([(embedding.base_vocab_size, len(names))])
        # Layer-major rows: layer l's copy of token entry k is row l * K + k; every layer starts
        # from the initializer word, as Textual Inversion does.
        embedding.vectors = nn.Parameter(embedding.vectors.detach().repeat(num_layers, 1))
        install_processors(self.unet, self.layer_names, self.tokenizer.model_max_length)
        if text_layer is None:
            text_layer = default_text_layer(self.layer_names)
        if not 0 <= text_layer < num_layers:
            raise ValueError(f"text_layer must be in [0, {num_layers}), got {text_layer}.")
        self.text_layer = text_layer
        if init_embeddings is not None:
            self.load_embeddings(init_embeddings)

    @property
    def num_vectors(self) -> int:
        return self.concept_tokens.num_vectors

    def layer_vectors(self, concept_index: int) -> torch.Tensor:
        """One concept's vectors, (n_layers, num_vectors, dim)."""
        table = self.concept_tokens.embedding.vectors
        per_layer = table.view(len(self.layer_names), -1, table.shape[-1])
        start = concept_index * self.num_vectors
        return per_layer[:, start : start + self.num_vectors]

    def encode_text(self, prompts: list[str]) -> TextEncoding:
        """Per-layer states (``layer_states``, packed) and ``text_layer``'s (``hidden_states``)."""
        input_ids = self.tokenize(prompts)
        layers = encode_per_layer(self.text_encoder, input_ids, self.blocks, len(self.layer_names))
        return TextEncoding(
            hidden_states=layers[self.text_layer], input_ids=input_ids, layer_states=pack(layers)
        )

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
        vectors, layers = read_xti(path)
        check_layers(layers, self.layer_names, repr(str(path)))
        with torch.no_grad():
            for index, concept in enumerate(self.concepts):
                target = self.layer_vectors(index)
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
        tensors = {
            c.token: self.layer_vectors(i).detach().float().cpu().contiguous()
            for i, c in enumerate(self.concepts)
        }
        metadata = {
            "xti_layers": json.dumps(self.layer_names),
            "xti_tokens": json.dumps([c.token for c in self.concepts]),
        }
        save_file(tensors, str(folder / XTI_EMBEDS), metadata=metadata)
        return [folder / XTI_EMBEDS]

    @classmethod
    def load_into(cls, pipeline: StableDiffusionPipeline, folder: str | Path) -> None:
        """Refused (`NotLoadableError`): a plain pipeline's prompts cannot reach the per-layer
        tokens; the message names `xti_pipeline` and `load_xti`."""
        raise not_loadable(cls.__name__, folder, cls.LOAD_INSTEAD)


# ----- diffusers: loading and generating ----------------------------------------------------
def load_xti(pipe: StableDiffusionPipeline, path: str | Path) -> list[str]:
    """Install an XTI export into a pipeline: tokens, per-layer rows and attention processors.

    Generate with `xti_prompt_embeds` (any pipeline) or build an `XTIStableDiffusionPipeline`
    (plain prompts). Returns the tokens loaded; raises before touching the pipeline if the
    export's layers do not match its UNet.
    """
    vectors, layers = read_xti(path)
    check_layers(layers, cross_attention_layers(pipe.unet), repr(str(path)))
    tokenizer, text_encoder = pipe.tokenizer, pipe.text_encoder
    num_vectors = {t: v.shape[1] for t, v in vectors.items()}
    names = [n for t in vectors for n in vector_token_names(t, num_vectors[t])]
    vocab = tokenizer.get_vocab()
    taken = [n for n in names if n in vocab or f"{n}</w>" in vocab]
    if taken:
        raise ValueError(f"Tokens {taken} are already in the pipeline's tokenizer.")
    first = len(tokenizer)
    if text_encoder.get_input_embeddings().num_embeddings != first:
        raise ValueError(
            f"The text encoder has {text_encoder.get_input_embeddings().num_embeddings} token "
            f"embeddings but the tokenizer {first} tokens; load_xti needs them to agree."
        )
    tokenizer.add_tokens(names)
    reserve_layer_tokens(tokenizer, names, len(layers))
    text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    rows = torch.cat([v.reshape(len(layers), -1, v.shape[-1]) for v in vectors.values()], dim=1)
    weight = text_encoder.get_input_embeddings().weight
    with torch.no_grad():
        weight[first:] = rows.reshape(-1, rows.shape[-1]).to(weight.dtype)
    blocks = getattr(pipe, "xti_blocks", None) or LayerTokenBlocks()
    blocks.blocks.append((first, len(names)))
    pipe.xti_blocks, pipe.xti_layers = blocks, layers
    install_processors(pipe.unet, layers, tokenizer.model_max_length)
    return list(vectors)


def xti_prompt_embeds(pipe: StableDiffusionPipeline, prompts: list[str]) -> torch.Tensor:
    """Packed per-layer states (B, n_layers * L, D): pass as ``prompt_embeds`` (and the
    negative prompts' as ``negative_prompt_embeds``) to a pipeline `load_xti` prepared."""
    blocks = getattr(pipe, "xti_blocks", None)
    if blocks is None:
        raise ValueError("No XTI embeddings in this pipeline; call load_xti(pipe, path) first.")
    expanded = pipe.maybe_convert_prompt(list(prompts), pipe.tokenizer)
    input_ids = tokenize_padded(pipe.tokenizer, expanded, pipe.text_encoder.device)
    with torch.no_grad():
        layers = encode_per_layer(pipe.text_encoder, input_ids, blocks, len(pipe.xti_layers))
    return pack(layers)


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
            prompts = [prompt] if isinstance(prompt, str) else list(prompt or [])
            prompt_embeds = xti_prompt_embeds(self, prompts)
        if do_classifier_free_guidance and negative_prompt_embeds is None:
            count = prompt_embeds.shape[0]
            if negative_prompt is None or isinstance(negative_prompt, str):
                negatives = [negative_prompt or ""] * count
            else:
                negatives = list(negative_prompt)
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


def xti_pipeline(
    pretrained_model_name_or_path: str, embeddings: str | Path, **kwargs: Any
) -> XTIStableDiffusionPipeline:
    """Load Stable Diffusion (hub id, folder or ``tiny-sd``) and install XTI embeddings."""
    kwargs.setdefault("safety_checker", None)
    pipe = XTIStableDiffusionPipeline.from_pretrained(
        resolve_pretrained(pretrained_model_name_or_path), **kwargs
    )
    load_xti(pipe, embeddings)
    return pipe
