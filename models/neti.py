"""NeTI (Alaluf et al. 2023, "A Neural Space-Time Representation for Text-to-Image
Personalization"): the concept's embedding is a function of (denoising timestep, UNet layer).

Only the mapper trains (`models.neti_mapper`); the model and the token's own row stay frozen.
For a prompt with the concept token, every UNet cross-attention layer l at timestep t reads
the text encoder's states of the prompt whose token embeds as the mapper's word vector for
(t, l), plus the **textual bypass**: the mapper's second vector, rescaled to the norm of the
token's last encoder state and times ``bypass_scale`` (0.2), added to that state before CLIP's
final layer norm (the authors' code; the paper adds it "to the output of the text encoder").
The per-layer states are packed as XTI's are (`models.xti_layers`: (B, n_layers * L, D), one
slice per layer), and the per-step states are made where the timestep is known:

- training: ``predict_noise`` re-encodes the step's prompts (a `TextEncoding`'s ids) at each
  sample's own timestep, so DDLoss's extra UNet calls get them too;
- sampling, the module's and a diffusers pipeline's alike: the first step's states and a
  ``callback_on_step_end`` that makes each next step's (`generation.step_states`).

``encode_text(...).hidden_states`` (what text-side losses such as SPL see) are the states at
the middle of the schedule and the middle block's layer. Defaults are the authors' code's
(input_configs/train.yaml, training/config.py): lr 1e-3 scaled by batch x accumulation x
GPUs, batch 2 x 4 accumulated, 1000 steps, output rescaled to the norm of the super-category
word's embedding (here the concept's class word).

Export: ``neti_mapper.safetensors`` (the mapper's weights, its configuration, the token and the
UNet layers in the metadata). `load_neti` installs it in a ``StableDiffusionPipeline`` (token,
mapper, per-layer attention processors) and `neti_call_kwargs` gives a call its per-step states.
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
from generation.step_states import StepStates
from models.base import PersonalizationModule
from models.neti_mapper import NeTIMapper
from models.text.extra_vectors import extra_vectors_in
from models.xti_layers import (
    check_layers,
    cross_attention_layers,
    default_text_layer,
    install_processors,
    pack,
)
from step.encoding import TextEncoding, tokenize_padded

NETI_MAPPER = "neti_mapper.safetensors"


class NeTIText:
    """Prompt ids and timesteps -> the packed per-layer states NeTI's UNet layers read."""

    def __init__(
        self,
        text_encoder: nn.Module,
        mapper: NeTIMapper,
        token_id: int,
        num_layers: int,
        bypass_scale: float,
    ) -> None:
        self.text_encoder, self.mapper, self.token_id = text_encoder, mapper, token_id
        self.num_layers, self.bypass_scale = num_layers, bypass_scale

    def plain(self, input_ids: torch.Tensor) -> torch.Tensor:
        """States of prompts as the encoder reads them (the token's frozen row, if any)."""
        return self.text_encoder(input_ids)[0]

    def layer_states(
        self,
        input_ids: torch.Tensor,
        timesteps: torch.Tensor,
        layers: list[int],
        keep: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(len(layers), B, L, D): each layer's states at each prompt's timestep. ``keep``:
        nested dropout per (layer, prompt-with-token) row, layer-major."""
        batch = input_ids.shape[0]
        timesteps = torch.as_tensor(timesteps, device=input_ids.device).reshape(-1).expand(batch)
        plain = self.plain(input_ids)
        holds = (input_ids == self.token_id).any(dim=-1)
        if not bool(holds.any()):
            return plain.unsqueeze(0).expand(len(layers), -1, -1, -1)
        rows, row_t = input_ids[holds], timesteps[holds]
        count = rows.shape[0]
        layer_index = torch.tensor(layers, device=rows.device).repeat_interleave(count)
        word, bypass = self.mapper(row_t.repeat(len(layers)), layer_index, keep)
        ids = rows.repeat(len(layers), 1)
        is_token = ids == self.token_id
        first_extra = int(self.text_encoder.get_input_embeddings().weight.shape[0])
        first_extra = max(first_extra, int(ids.max()) + 1)
        row_ids = torch.arange(ids.shape[0], device=ids.device)[:, None] + first_extra
        with extra_vectors_in(self.text_encoder, first_extra, word.to(plain.dtype)):
            swapped = torch.where(is_token, row_ids, ids)
            output = self.text_encoder(swapped, output_hidden_states=True)
        last = output.hidden_states[-1]  # the encoder's output, before the final layer norm
        if bypass is not None:
            bypass_term = is_token[..., None] * rescaled_bypass(bypass.to(last.dtype), last)
            last = last + self.bypass_scale * bypass_term
        # (transformers 5 keeps the layer norm on the model, 4.x on its text_model)
        final_norm = getattr(self.text_encoder, "text_model", self.text_encoder).final_layer_norm
        states = final_norm(last)
        return torch.stack(
            [plain.index_put((holds,), chunk) for chunk in states.split(count)]
        )

    def conditioning(
        self, input_ids: torch.Tensor, timesteps: torch.Tensor, keep: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B, n_layers * L, D): every layer's states, packed as the UNet's processors read."""
        layers = list(range(self.num_layers))
        return pack(self.layer_states(input_ids, timesteps, layers, keep))


def rescaled_bypass(bypass: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
    """Each row's bypass (R, D) at the norm of that row's states at every position (R, L, D)."""
    direction = bypass / bypass.norm(dim=-1, keepdim=True)
    return direction[:, None, :] * states.norm(dim=-1, keepdim=True)


class NeTI(PersonalizationModule):
    """Trains NeTI's mapper; the concept token's embedding comes from it at every (t, l)."""

    families: ClassVar[frozenset[str]] = frozenset({"sd1"})
    family_refusals: ClassVar[dict[str, str]] = {
        "sdxl": "NeTI's mapper and bypass are written for SD 1.x's one CLIP text encoder",
        "flux": "FLUX's transformer reads one text sequence in every block: there is no "
        "per-layer text input for NeTI's per-layer embeddings",
    }
    EXPORT_FORMATS: ClassVar[tuple[tuple[str, str], ...]] = ((NETI_MAPPER, Format.NETI_MAPPER),)
    LOAD_INSTEAD: ClassVar[str] = (
        "its token's embedding changes per step and layer; models.neti.load_neti(pipe, "
        "folder), then pipe(**neti_call_kwargs(pipe, prompts, num_inference_steps=N), "
        "num_inference_steps=N)"
    )

    def __init__(
        self,
        output_bypass: bool = True,
        bypass_scale: float = 0.2,
        nested_dropout: float = 0.5,
        num_time_anchors: int = 10,
        sigma_t: float = 0.03,
        sigma_l: float = 2.0,
        normalize_output: bool = True,
        train_tokens: bool = False,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            output_bypass: the textual bypass (a second mapper output added to the token's
                encoder output).
            bypass_scale: the bypass's weight, relative to the state's norm (the code's 0.2).
            nested_dropout: the probability of nested dropout on a call while training.
            num_time_anchors: time anchors of the mapper's first layer (x the UNet's layers).
            sigma_t, sigma_l: the Fourier features' scales for the timestep and the layer.
            normalize_output: rescale the mapper's output to the class word's embedding norm.
            train_tokens: must stay false: the token's own row is never read.
        """
        if train_tokens or kwargs.get("num_vectors", 1) != 1:
            raise ValueError(
                "NeTI's concept embedding comes from its mapper: set train_tokens: false and "
                "num_vectors: 1."
            )
        if not 0.0 <= nested_dropout <= 1.0:
            raise ValueError(f"nested_dropout is a probability in [0, 1], got {nested_dropout}.")
        super().__init__(train_tokens=False, **kwargs)
        if len(self.concepts) != 1:
            raise ValueError(
                f"NeTI learns one concept per mapper (the paper's setting); got "
                f"{len(self.concepts)}. Train one run per concept."
            )
        self.layer_names = cross_attention_layers(self.unet)
        install_processors(self.unet, self.layer_names, self.tokenizer.model_max_length)
        self.text_layer = default_text_layer(self.layer_names)
        self.nested_dropout, self.bypass_scale = nested_dropout, bypass_scale
        token_name = vector_token_names(self.concepts[0].token, 1)[0]
        self.token_id = int(self.tokenizer.convert_tokens_to_ids(token_name))
        dim = self.text_encoder.config.hidden_size
        norm = self.class_word_norm() if normalize_output else None
        with torch.random.fork_rng(devices=[]):  # the same start in every run of a seed
            torch.manual_seed(self.seed)
            self.neti_mapper = NeTIMapper(
                dim,
                len(self.layer_names),
                self.num_timesteps,
                output_bypass,
                num_time_anchors,
                sigma_t,
                sigma_l,
                norm_scale=norm,
            )
        self._dropout_calls = 0
        self._sample_keys: list[int] | None = None  # the step's, while it computes its losses

    @property
    def num_timesteps(self) -> int:
        return int(self.noise_scheduler.config.num_train_timesteps)

    def class_word_norm(self) -> float:
        """The norm of the class word's (first token's) embedding: where real words live."""
        ids = self.tokenizer(self.concepts[0].class_word, add_special_tokens=False).input_ids
        base = self.concept_tokens.embedding.base.weight
        return float(base[ids[0]].norm())

    def text(self) -> NeTIText:
        return NeTIText(
            self.text_encoder,
            self.neti_mapper,
            self.token_id,
            len(self.layer_names),
            self.bypass_scale,
        )

    def trainable_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"mapper": list(self.neti_mapper.parameters())}

    def dropout_keep(self, holding: torch.Tensor) -> torch.Tensor | None:
        """Nested dropout of one mapper call while training, per (layer, prompt with the
        token), layer-major: as the authors' code, a coin flip per layer call, then a random
        prefix length per prompt. Each draw is seeded by the prompt's sample (its
        ``sample_key``), the step and the call, so gradient-accumulated batches, resumed runs
        and any number of processes draw the same for the same sample."""
        keys = self._sample_keys
        if not self.training or self.nested_dropout == 0 or keys is None:
            return None
        self._dropout_calls += 1
        hidden = self.neti_mapper.hidden_dim
        keep = []
        for layer in range(len(self.layer_names)):
            for row in holding.tolist():
                key = int(keys[row % len(keys)])  # DDLoss stacks conditions of the batch
                mixed = ((self.seed * 1_000_003 + key) * 1009 + self._dropout_calls) * 97 + layer
                generator = torch.Generator().manual_seed(mixed % (2**63))
                dropped = float(torch.rand((), generator=generator)) < self.nested_dropout
                length = int(torch.randint(0, hidden, (), generator=generator))
                keep.append(length if dropped else hidden)
        return torch.tensor(keep, device=self.device)

    def compute_losses(self, batch: dict[str, Any], draws: Any) -> dict[str, Any]:
        """The base's step, with the batch's sample keys at hand for nested dropout."""
        keys = batch.get("sample_key")
        self._sample_keys = None if keys is None else [int(k) for k in keys]
        self._dropout_calls = 0
        try:
            return super().compute_losses(batch, draws)
        finally:
            self._sample_keys = None

    def encode_text(self, prompts: list[str]) -> TextEncoding:
        """States at the middle of the schedule and the middle block's layer (what text-side
        losses see); ``predict_noise`` re-encodes at each sample's timestep."""
        input_ids = self.tokenize(prompts)
        middle = torch.full((len(prompts),), self.num_timesteps // 2, device=input_ids.device)
        states = self.text().layer_states(input_ids, middle, [self.text_layer])[0]
        return TextEncoding(states, input_ids)

    def encode_token_ids(
        self, input_ids: torch.Tensor, extra_vectors: torch.Tensor | None = None
    ) -> TextEncoding:
        if extra_vectors is not None:
            raise ValueError(
                "NeTI's token embedding comes from its mapper; token-id losses with their own "
                "vectors (MLM) do not compose with it."
            )
        middle = torch.full((len(input_ids),), self.num_timesteps // 2, device=input_ids.device)
        states = self.text().layer_states(input_ids, middle, [self.text_layer])[0]
        return TextEncoding(states, input_ids)

    def predict_noise(
        self,
        noisy_latents: torch.Tensor,
        timesteps: torch.Tensor,
        encoder_states: torch.Tensor | TextEncoding,
        time_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The base's denoiser call, with a `TextEncoding`'s prompts re-encoded per layer at
        each sample's timestep (raw states are used as given: prompts without the token)."""
        if isinstance(encoder_states, TextEncoding):
            ids = encoder_states.input_ids
            holding = (ids == self.token_id).any(dim=-1).nonzero().flatten()
            keep = self.dropout_keep(holding) if len(holding) else None
            encoder_states = self.text().conditioning(ids, timesteps, keep)
        return super().predict_noise(noisy_latents, timesteps, encoder_states, time_ids)

    def prompt_call_kwargs(
        self,
        pipe: Any,
        prompts: list[str],
        negative_prompt: str,
        resolution: int,
        num_inference_steps: int,
    ) -> dict[str, Any]:
        states = NeTIStepStates(self.text(), self.tokenize, prompts, negative_prompt)
        return states.call_kwargs(pipe, num_inference_steps)

    def export(self, folder: Path) -> list[Path]:
        """``neti_mapper.safetensors``: the mapper's weights and what rebuilds it."""
        folder.mkdir(parents=True, exist_ok=True)
        mapper = self.neti_mapper
        tensors = {k: v.detach().float().cpu().contiguous() for k, v in mapper.state_dict().items()}
        config = {
            "output_dim": mapper.output_dim,
            "num_layers": len(self.layer_names),
            "num_timesteps": self.num_timesteps,
            "output_bypass": mapper.output_bypass,
            "num_time_anchors": mapper.input_layer.out_features // len(self.layer_names),
            "num_features": mapper.frequencies.shape[0],
            "hidden_dim": mapper.hidden_dim,
            "bypass_scale": self.bypass_scale,
        }
        metadata = {
            "neti_config": json.dumps(config),
            "neti_token": self.concepts[0].token,
            "neti_layers": json.dumps(self.layer_names),
        }
        save_file(tensors, str(folder / NETI_MAPPER), metadata=metadata)
        return [folder / NETI_MAPPER]

    @classmethod
    def load_into(cls, pipeline: StableDiffusionPipeline, folder: str | Path) -> None:
        """Refused (`NotLoadableError`): the message names `load_neti` and `neti_call_kwargs`."""
        raise not_loadable(cls.__name__, folder, cls.LOAD_INSTEAD)


class NeTIStepStates(StepStates):
    """Each denoising step's per-layer states of the prompts, from NeTI's mapper."""

    def __init__(
        self, text: NeTIText, tokenize: Any, prompts: list[str], negative_prompt: str = ""
    ) -> None:
        self.text = text
        self.positive_ids = tokenize(list(prompts))
        self.negative_ids = tokenize([negative_prompt] * len(prompts))

    def states_at(self, timestep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            positive = self.text.conditioning(self.positive_ids, timestep)
            negative = self.text.conditioning(self.negative_ids, timestep)
        return positive, negative


# ----- diffusers: loading and generating ----------------------------------------------------
def read_neti(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], str, list[str]]:
    """The mapper's tensors, its configuration, the token and the UNet layers it was made for."""
    path = Path(path)
    if path.is_dir():
        path = path / NETI_MAPPER
    if not path.is_file():
        raise FileNotFoundError(f"No NeTI mapper at {str(path)!r} ({NETI_MAPPER}).")
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
        if "neti_config" not in metadata:
            raise ValueError(f"{str(path)!r} has no 'neti_config' metadata; not a NeTI export.")
        tensors = {key: handle.get_tensor(key) for key in list(handle.keys())}  # noqa: SIM118
    config = json.loads(metadata["neti_config"])
    return tensors, config, metadata["neti_token"], json.loads(metadata["neti_layers"])


def load_neti(pipe: StableDiffusionPipeline, path: str | Path) -> str:
    """Install a NeTI export into a Stable Diffusion pipeline: the token, the mapper
    (``pipe.neti``) and the per-layer attention processors; generate with `neti_call_kwargs`.
    Raises before changing the pipeline when the export does not fit it."""
    tensors, config, token, layers = read_neti(path)
    check_layers(layers, cross_attention_layers(pipe.unet), repr(str(path)))
    name = vector_token_names(token, 1)[0]
    if name in pipe.tokenizer.get_vocab():
        raise ValueError(f"Token {name!r} is already in the pipeline's tokenizer.")
    mapper = NeTIMapper(
        config["output_dim"],
        config["num_layers"],
        config["num_timesteps"],
        config["output_bypass"],
        config["num_time_anchors"],
        num_features=config["num_features"],
        hidden_dim=config["hidden_dim"],
    )
    mapper.load_state_dict(tensors)
    encoder = pipe.text_encoder
    mapper.to(encoder.device).eval()
    pipe.tokenizer.add_tokens([name])
    encoder.resize_token_embeddings(len(pipe.tokenizer), mean_resizing=False)
    token_id = int(pipe.tokenizer.convert_tokens_to_ids(name))
    pipe.neti = NeTIText(encoder, mapper, token_id, len(layers), config["bypass_scale"])
    install_processors(pipe.unet, layers, pipe.tokenizer.model_max_length)
    return token


def neti_call_kwargs(
    pipe: StableDiffusionPipeline,
    prompts: list[str],
    num_inference_steps: int,
    negative_prompt: str = "",
) -> dict[str, Any]:
    """Keyword arguments for ``pipe(...)`` (with the same ``num_inference_steps``): the first
    step's per-layer states and the callback that makes each later step's."""
    text = getattr(pipe, "neti", None)
    if text is None:
        raise ValueError("No NeTI mapper in this pipeline; call load_neti(pipe, path) first.")

    def tokenize(texts: list[str]) -> torch.Tensor:
        expanded = pipe.maybe_convert_prompt(texts, pipe.tokenizer)
        return tokenize_padded(pipe.tokenizer, expanded, pipe.text_encoder.device)

    return NeTIStepStates(text, tokenize, prompts, negative_prompt).call_kwargs(
        pipe, num_inference_steps
    )
