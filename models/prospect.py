"""ProSpect (Zhang et al. 2023, "Prompt Spectrum for Attribute-Aware Personalization").

The denoising schedule is cut into ``num_stages`` equal ranges of timesteps (the paper's 10 over
SD's 1000) and the concept token gets one embedding per stage: stage k's vectors condition
every UNet step whose timestep t has floor(t * num_stages / T) == k, i.e. t in
[k T / S, (k + 1) T / S) (stage 0: the last, least noisy steps; the paper's P_1 ... P_10 run
from the first, noisiest step, the reverse order). Only those vectors train.

The paper learns the 10 embeddings directly, each starting from the initializer word, as here;
the authors' code instead maps the initializer's embedding to all 10 through a small
transformer block that trains. Recipe (the authors' v1-finetune.yaml): SD 1.x, batch 1,
lr 1e-4, 10 stages.

The mechanics are XTI's with stages in place of layers (`models.xti`): each stage's copy of a
token is another tokenizer id, all stages' prompts go through the text encoder in one batched
call, and the states are packed along the sequence, (B, S * L, D). A forward pre-hook on the
UNet (`StageSelection`) gives each sample the slice of its own timestep's stage, so every
caller of the UNet (the training step, DDLoss's extra calls, sampling through a diffusers
pipeline) conditions by stage without knowing of it. Text-side losses see the states of one
stage, ``text_stage`` (the middle one by default), or every stage's where they ask for every
variant (SPL's ``every_layer``, MLM's layer variants).

Export: ``prospect_embeds.safetensors``, ``{token: (num_stages, num_vectors, dim)}`` with the
stages and the schedule length in its metadata. diffusers has no loader for it: `load_prospect`
adds the tokens' stage copies to a ``StableDiffusionPipeline``, and `prospect_call_kwargs`
gives a call the first stage's prompt states plus a ``callback_on_step_end`` that swaps in
each next step's stage before that step runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import torch
from diffusers import StableDiffusionPipeline
from safetensors import safe_open
from safetensors.torch import save_file

from backbones import pipeline_text_parts
from exports.manifest import Format, not_loadable
from generation.step_states import StepStates
from models.xti import XTI
from models.xti_layers import LayerTokenBlocks, encode_per_layer, install_token_copies
from step.encoding import TextEncoding, tokenize_padded

PROSPECT_EMBEDS = "prospect_embeds.safetensors"
STAGE_SUFFIX = "@prospect-stage"  # tokenizer entries that reserve the ids of stage copies


def check_stages(num_stages: int, num_timesteps: int) -> None:
    """Every stage must own at least one of the schedule's timesteps."""
    if not 1 <= num_stages <= num_timesteps:
        raise ValueError(
            f"num_stages is {num_stages}, but the model's schedule has {num_timesteps} "
            f"timesteps and each stage needs at least one; use 1 <= num_stages <= "
            f"{num_timesteps} (ProSpect's is 10)."
        )


def stage_of(timesteps: torch.Tensor, num_stages: int, num_timesteps: int) -> torch.Tensor:
    """Each timestep's stage, floor(t * S / T) clamped into [0, S) (int64, t's shape)."""
    stages = torch.floor(timesteps.float() * num_stages / num_timesteps).long()
    return stages.clamp(0, num_stages - 1)


class StageSelection:
    """A UNet forward pre-hook: packed per-stage states (B, S * L, D) in, each sample's own
    stage's (B, L, D) out; states of one prompt length (no concept token) pass unchanged."""

    def __init__(self, num_stages: int, num_timesteps: int, text_length: int) -> None:
        self.num_stages, self.num_timesteps = num_stages, num_timesteps
        self.text_length = text_length

    def select(self, states: torch.Tensor, timestep: Any) -> torch.Tensor:
        length = states.shape[1]
        if length == self.text_length:
            return states
        if length != self.num_stages * self.text_length:
            raise ValueError(
                f"ProSpect got encoder states of length {length}; expected {self.text_length} "
                f"(one prompt) or {self.num_stages} x {self.text_length} (packed per-stage "
                "states from encode_text(...).conditioning)."
            )
        batch = states.shape[0]
        t = torch.as_tensor(timestep, device=states.device).reshape(-1).expand(batch)
        stages = stage_of(t, self.num_stages, self.num_timesteps)
        per_stage = states.view(batch, self.num_stages, self.text_length, -1)
        return per_stage[torch.arange(batch, device=states.device), stages]

    def __call__(
        self, unet: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        args, kwargs = list(args), dict(kwargs)
        timestep = args[1] if len(args) > 1 else kwargs["timestep"]
        if len(args) > 2:
            args[2] = self.select(args[2], timestep)
        else:
            kwargs["encoder_hidden_states"] = self.select(
                kwargs["encoder_hidden_states"], timestep
            )
        return tuple(args), kwargs


def install_stage_selection(unet: Any, selection: StageSelection) -> None:
    """Hook ``selection`` into the UNet's forward (once: a second install replaces it)."""
    previous = getattr(unet, "_prospect_stage_hook", None)
    if previous is not None:
        previous.remove()
    unet._prospect_stage_hook = unet.register_forward_pre_hook(selection, with_kwargs=True)


class ProSpect(XTI):
    """Learns ``num_vectors`` vectors per concept for each stage of the denoising schedule."""

    EXPORT_FORMATS: ClassVar[tuple[tuple[str, str], ...]] = (
        (PROSPECT_EMBEDS, Format.PROSPECT_EMBEDDINGS),
    )
    families: ClassVar[frozenset[str]] = frozenset({"sd1"})
    family_refusals: ClassVar[dict[str, str]] = {
        "sdxl": "SDXL's pooled text embedding would need its own per-stage selection, which is "
        "not built (ProSpect is an SD 1.x method)",
        "flux": "ProSpect is built for the UNet's timestep-indexed DDPM schedule (SD 1.x)",
    }
    COPY_SUFFIX: ClassVar[str] = STAGE_SUFFIX
    LOAD_INSTEAD: ClassVar[str] = (
        "its per-stage tokens change with the timestep; models.prospect.load_prospect(pipe, "
        "folder), then pipe(**prospect_call_kwargs(pipe, prompts, num_inference_steps=N), "
        "num_inference_steps=N)"
    )

    def __init__(
        self,
        num_stages: int = 10,
        text_stage: int | None = None,
        init_embeddings: str | None = None,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            num_stages: equal ranges of the schedule's timesteps, one embedding each (the
                paper's 10); at most the schedule's length.
            text_stage: whose states ``encode_text(...).hidden_states`` returns, what
                text-side losses see (None: the middle stage).
            init_embeddings: a ``prospect_embeds.safetensors`` (or its folder) to start from.
        """
        self.requested_stages = num_stages  # read by variant_names, inside XTI's __init__
        super().__init__(text_layer=text_stage, **kwargs)
        self.stage_selection = StageSelection(
            num_stages, self.num_timesteps, self.tokenizer.model_max_length
        )
        install_stage_selection(self.unet, self.stage_selection)
        if init_embeddings is not None:
            self.load_embeddings(init_embeddings)

    @property
    def num_timesteps(self) -> int:
        return int(self.noise_scheduler.config.num_train_timesteps)

    @property
    def num_stages(self) -> int:
        return len(self.layer_names)

    def variant_names(self) -> list[str]:
        check_stages(self.requested_stages, self.num_timesteps)
        return [f"stage{k}" for k in range(self.requested_stages)]

    def route_variants(self) -> None:
        """Stage selection happens in the UNet's pre-hook (installed once stages are known)."""

    def stage_ranges(self) -> list[tuple[int, int]]:
        """Each stage's timesteps as [first, last] (inclusive), stage 0 first."""
        stages = stage_of(torch.arange(self.num_timesteps), self.num_stages, self.num_timesteps)
        return [
            (int(ts[0]), int(ts[-1]))
            for ts in (torch.nonzero(stages == k).flatten() for k in range(self.num_stages))
        ]

    def load_embeddings(self, path: str | Path) -> None:
        """Start from a ProSpect export with the same stages, tokens and num_vectors."""
        vectors, stages, timesteps = read_prospect(path)
        if (stages, timesteps) != (self.num_stages, self.num_timesteps):
            raise ValueError(
                f"{str(path)!r} holds {stages} stages over {timesteps} timesteps; this run has "
                f"{self.num_stages} over {self.num_timesteps}. Set num_stages: {stages} or "
                "start without init_embeddings."
            )
        self.copy_saved_vectors(vectors, 0, path)

    def export(self, folder: Path) -> list[Path]:
        """``prospect_embeds.safetensors``: each concept's per-stage vectors, the stages."""
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {
            c.token: self.layer_vectors(i).detach().float().cpu().contiguous()
            for i, c in enumerate(self.concepts)
        }
        metadata = {
            "prospect_stages": str(self.num_stages),
            "prospect_num_train_timesteps": str(self.num_timesteps),
            "prospect_stage_timesteps": json.dumps(self.stage_ranges()),
            "prospect_tokens": json.dumps([c.token for c in self.concepts]),
        }
        save_file(tensors, str(folder / PROSPECT_EMBEDS), metadata=metadata)
        return [folder / PROSPECT_EMBEDS]

    @classmethod
    def load_into(cls, pipeline: StableDiffusionPipeline, folder: str | Path) -> None:
        """Refused (`NotLoadableError`): a plain call's prompts cannot change per step; the
        message names `load_prospect` and `prospect_call_kwargs`."""
        raise not_loadable(cls.__name__, folder, cls.LOAD_INSTEAD)


def read_prospect(path: str | Path) -> tuple[dict[str, torch.Tensor], int, int]:
    """``{token: (stages, num_vectors, dim)}``, the number of stages and the schedule length."""
    path = Path(path)
    if path.is_dir():
        path = path / PROSPECT_EMBEDS
    if not path.is_file():
        raise FileNotFoundError(f"No ProSpect embeddings at {str(path)!r} ({PROSPECT_EMBEDS}).")
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
        if "prospect_stages" not in metadata:
            raise ValueError(f"{str(path)!r} has no 'prospect_stages' metadata; not ProSpect's.")
        tokens = json.loads(metadata["prospect_tokens"])
        vectors = {t: handle.get_tensor(t) for t in tokens}
    stages = int(metadata["prospect_stages"])
    return vectors, stages, int(metadata["prospect_num_train_timesteps"])


# ----- diffusers: loading and generating ----------------------------------------------------
def load_prospect(pipe: StableDiffusionPipeline, path: str | Path) -> list[str]:
    """Add an export's tokens (each stage's copy its own id) to a Stable Diffusion pipeline;
    generate with `prospect_call_kwargs`. Returns the tokens; raises before changing the
    pipeline when it cannot take them."""
    vectors, stages, timesteps = read_prospect(path)
    scheduler_steps = int(pipe.scheduler.config.num_train_timesteps)
    if timesteps != scheduler_steps:
        raise ValueError(
            f"{str(path)!r} cut a {timesteps}-step schedule into stages, but this pipeline's "
            f"scheduler has {scheduler_steps}; load it into the model it was trained on."
        )
    parts = pipeline_text_parts(pipe)
    if len(parts) != 1:
        raise ValueError("ProSpect embeddings load into a one-encoder (SD 1.x) pipeline.")
    first = install_token_copies(parts, [vectors], stages, STAGE_SUFFIX)
    blocks = getattr(pipe, "prospect_blocks", None) or LayerTokenBlocks()
    blocks.blocks.append((first, sum(v.shape[1] for v in vectors.values())))
    pipe.prospect_blocks, pipe.prospect_stages = blocks, stages
    return list(vectors)


def prospect_stage_states(pipe: StableDiffusionPipeline, prompts: list[str]) -> torch.Tensor:
    """(S, B, L, D): the prompts' text states as each stage's copy of the tokens gives them."""
    blocks = getattr(pipe, "prospect_blocks", None)
    if blocks is None:
        raise ValueError("No ProSpect tokens in this pipeline; call load_prospect(pipe, path).")
    expanded = pipe.maybe_convert_prompt(list(prompts), pipe.tokenizer)
    encoder = pipe.text_encoder
    input_ids = tokenize_padded(pipe.tokenizer, expanded, encoder.device)

    def encode(ids: torch.Tensor) -> TextEncoding:
        return TextEncoding(encoder(ids)[0], ids)

    with torch.no_grad():
        stages = encode_per_layer(encode, input_ids, blocks, pipe.prospect_stages)
    return torch.stack([stage.hidden_states for stage in stages])


class ProSpectStepStates(StepStates):
    """Each denoising step's stage states for a pipeline `load_prospect` prepared."""

    def __init__(
        self, pipe: StableDiffusionPipeline, prompts: list[str], negative_prompt: str = ""
    ) -> None:
        self.positive = prospect_stage_states(pipe, prompts)
        self.negative = prospect_stage_states(pipe, [negative_prompt] * len(prompts))
        self.num_timesteps = int(pipe.scheduler.config.num_train_timesteps)

    def states_at(self, timestep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.as_tensor(timestep).reshape(1)
        stage = int(stage_of(t, len(self.positive), self.num_timesteps)[0])
        return self.positive[stage], self.negative[stage]


def prospect_call_kwargs(
    pipe: StableDiffusionPipeline,
    prompts: list[str],
    num_inference_steps: int,
    negative_prompt: str = "",
) -> dict[str, Any]:
    """Keyword arguments for ``pipe(...)`` (with the same ``num_inference_steps``): the first
    step's stage states and the callback that moves each later step to its stage."""
    callback = ProSpectStepStates(pipe, prompts, negative_prompt)
    return callback.call_kwargs(pipe, num_inference_steps)
