"""The base LightningModule: everything a personalization baseline shares.

A baseline subclass says only what differs: which parameters train (``trainable_groups``) and
how they are saved (``export``). The base loads Stable Diffusion, freezes it, injects the concept
tokens, caches instance latents, runs one denoising step into a `StepRecord`, and adds the
weighted regularizers to the denoising loss. The text path, the optimizer and checkpoint hooks,
sampling and the test/predict stages come from mixins (models/text/, training/, generation/).

One file on purpose: the constructor's documented options, the denoising step and the
lifecycle hooks that order it (setup -> data requests -> prefill) are the contract every
baseline and regularizer relies on (docs/DESIGN.md, "One training step"), and read best in
one place.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, ClassVar

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from safetensors.torch import save_file
from torch import nn

from backbones import AUTO, choose_family
from backbones.base import family_error
from backbones.flow_matching import FlowMatchingFamily
from backbones.flow_matching_settings import FlowMatchingSettings
from components.text_projection import default_clip_for, load_text_projection
from core.concept import ConceptSpec
from core.images import cover_crop
from exports.external_formats import (
    A1111_FOLDER,
    a1111_name,
    write_a1111_embedding,
    write_sdxl_embedding,
)
from generation.evaluation import EvaluationMixin, EvaluationSettings
from generation.image_pipeline import ModuleImagePipeline
from generation.sampling import SamplingMixin
from generation.schedulers import check_sampler_fits
from losses.base import Regularizer
from models.text.concept_tokens import ConceptTokens
from models.text.text_cache import ConstantTextCache, check_text_is_frozen
from models.text.text_path import TextPathMixin
from pretrained.stable_diffusion import load_vae
from step.draws import (
    INSTANCE_SALT,
    PRIOR_SALT,
    VALIDATION_SALT,
    SampleDraws,
)
from step.encoding import TextEncoding
from step.prior import PRIOR_BATCH_KEYS, PRIOR_REQUESTER, split_prior
from step.record import StepRecord
from step.requests import TextRequest
from training.ema import AveragedWeightsMixin, EMASettings
from training.finite_guard import check_loss_parts
from training.loss_weighting import check_min_snr_gamma, min_snr_weights
from training.memory import (
    MemorySettings,
    autocast_calls,
    check_mixed_precision,
    enable_gradient_checkpointing,
    store_frozen_in,
)
from training.optimization import OptimizationMixin
from training.quantization import quantize_frozen_linears

MASKED_LOSS_REQUESTER = "model.init_args.background_loss_weight (the subject-masked loss)"


# Where the validation loss is measured, as fractions of the training schedule: spread over
# it, as the fixed timestep set of kohya's validation loss is.
VALIDATION_TIMESTEPS = (0.1, 0.3, 0.5, 0.7, 0.9)


def _default_optimizer(params: Any) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=1e-4)


class PersonalizationModule(
    TextPathMixin,
    AveragedWeightsMixin,
    OptimizationMixin,
    SamplingMixin,
    EvaluationMixin,
    L.LightningModule,
):
    """Shared training step of all baselines; see the module docstring."""

    # The backbone families (backbones/) the baseline is written and tested for.
    families: ClassVar[frozenset[str]] = frozenset({"sd1"})
    # Why a family can never take this baseline (named in the refusal), by family name.
    family_refusals: ClassVar[dict[str, str]] = {}

    def __init__(
        self,
        pretrained_model_name_or_path: str = "tiny-sd",
        concepts: list[ConceptSpec] | None = None,
        num_vectors: int = 1,
        train_tokens: bool = True,
        regularizers: list[Regularizer] | None = None,
        optimizer: OptimizerCallable = _default_optimizer,
        learning_rates: dict[str, float] | None = None,
        scale_lr: bool = False,
        lr_warmup_steps: int = 0,
        lr_scheduler: LRSchedulerCallable | None = None,
        cache_latents: bool = True,
        noise_offset: float = 0.0,
        min_snr_gamma: float | None = None,
        background_loss_weight: float | None = None,
        prior_loss_weight: float = 0.0,
        seed: int = 0,
        revision: str | None = None,
        variant: str | None = None,
        backbone: str = AUTO,
        vae_name_or_path: str | None = None,
        evaluation: EvaluationSettings = EvaluationSettings(),  # noqa: B008 (never mutated)
        memory: MemorySettings = MemorySettings(),  # noqa: B008 (frozen)
        flow_matching: FlowMatchingSettings = FlowMatchingSettings(),  # noqa: B008 (frozen)
        ema: EMASettings | None = None,
        validation_timesteps: tuple[float, ...] = VALIDATION_TIMESTEPS,
    ) -> None:
        """
        Args:
            pretrained_model_name_or_path: hub id, local diffusers folder, ``tiny`` (the
                chosen family's tiny offline pipeline), ``tiny-sd``, ``tiny-sdxl``,
                ``sd15-random`` or ``sdxl-random``.
            concepts: linked from the DataModule by the CLI (token, class word, initializer).
            num_vectors: learned vectors per concept token (Textual Inversion's multi-vector).
            train_tokens: whether the concept token vectors train.
            regularizers: the papers' losses, each weighted and logged on its own.
            optimizer: a callable taking parameter groups (``class_path`` in configs).
            learning_rates: per-group learning rates by group name (e.g. ``tokens``, ``kv``);
                groups left out use the optimizer's own ``lr``.
            scale_lr: multiply every learning rate by batch size x accumulation x world size,
                as the Textual Inversion and Custom Diffusion recipes do.
            lr_warmup_steps: linear warm-up, then constant (when no lr_scheduler is given).
            lr_scheduler: a callable taking the optimizer (``class_path`` in configs, e.g.
                torch.optim.lr_scheduler.CosineAnnealingLR); stepped every optimizer step.
            cache_latents: encode each deterministic instance image once (the VAE is frozen).
            noise_offset: offset noise strength (0 disables).
            min_snr_gamma: Min-SNR-gamma loss weighting (Hang et al. 2023) on DDPM families:
                each sample's denoising loss times min(SNR(t), gamma) / SNR(t) (epsilon
                prediction; / (SNR(t) + 1) for v-prediction), diffusers' ``--snr_gamma``;
                5.0 is the paper's. None: plain MSE. Flow matching weighs with
                ``flow_matching.weighting_scheme`` instead.
            background_loss_weight: the subject-masked loss: each instance sample's
                denoising loss weighted 1 on the concept's mask and this weight elsewhere (0:
                the background gets no gradient), normalised by the weights; the masks come
                from data.init_args.mask_dir or the augmentation's segmenter
                (datamodules/extras/subject_mask.py). Class images stay unweighted. None: off.
            prior_loss_weight: DreamBooth's prior preservation (0 disables): class images go
                through the same UNet call and their denoising loss is added with this weight;
                the DataModule then needs data.init_args.class_images.folder.
            seed: seeds noise and timesteps per step, so a resumed run draws the same ones.
            backbone: the denoiser family (backbones/): ``auto`` reads it from the model's
                model_index.json (SD 1.x when it cannot), or ``sd1`` / ``sdxl``.
            vae_name_or_path: a VAE in place of the model's own (hub id or folder), e.g.
                madebyollin/sdxl-vae-fp16-fix, SDXL's VAE fine-tuned to keep its activations in
                fp16 range (the original overflows in half precision).
            evaluation: how ``test`` / ``predict`` generate and what ``test`` scores
                (generation/evaluation.py; test_step and predict_step come from its mixin).
            memory: half-stored frozen weights, gradient checkpointing, 8-bit AdamW, a
                compiled UNet (training/memory.py); applied in ``setup``, once the
                baseline has made its trained parameters.
            flow_matching: the objective's options on a flow-matching backbone (FLUX):
                timestep density, loss weighting, training guidance
                (backbones/flow_matching.py); a DDPM backbone refuses changed ones.
            ema: an exponential moving average of the trained weights (training/ema.py),
                used for sampling, ``test`` and the export; None: off.
            validation_timesteps: the validation loss's fixed timesteps, as fractions of the
                training schedule (t = fraction x its length): every validation measures the
                plain denoising MSE at each of them with noise fixed per photo, and logs their
                mean (``val/loss``), so runs and steps compare on the same draws.
        """
        super().__init__()
        if not concepts:
            raise ValueError(
                "No concepts given. The CLI links them from the DataModule (data.init_args."
                "concept_token / class_word); in code pass concepts=[ConceptSpec('<v1>', 'dog')]."
            )
        family, model_name = choose_family(pretrained_model_name_or_path, backbone)
        if family.name not in self.families:
            why = self.family_refusals.get(family.name, "")
            raise ValueError(family_error(family, type(self).__name__, self.families, why))
        self.family = family.configured(flow_matching)
        flow = isinstance(self.family, FlowMatchingFamily)
        check_sampler_fits(evaluation.scheduler, flow, family.name)
        self.backbone = self.family.name
        components = self.family.load(model_name, revision, variant)
        self.family.check_components(components)
        if vae_name_or_path is not None:
            channels = self.family.latent_channels(components.unet)
            components.vae = load_vae(vae_name_or_path, channels, revision)
        self.pretrained_model_name_or_path = model_name
        for name, tokenizer in zip(self.family.tokenizer_names, components.tokenizers):
            setattr(self, name, tokenizer)
        for name, encoder in zip(self.family.text_encoder_names, components.text_encoders):
            setattr(self, name, encoder)
        self.noise_scheduler = components.noise_scheduler
        self.vae = components.vae
        self.unet = components.unet
        for frozen in (*self.text_encoders, self.vae, self.unet):
            frozen.requires_grad_(False)
            frozen.eval()
        # Concept tokens in every text encoder, with the same ids (the families' tokenizers
        # share a vocabulary); the first encoder's are ``concept_tokens``.
        self.encoder_concept_tokens = [
            ConceptTokens(tokenizer, encoder, concepts, num_vectors)
            for tokenizer, encoder in zip(components.tokenizers, components.text_encoders)
        ]
        self.concept_tokens = self.encoder_concept_tokens[0]
        for tokens in self.encoder_concept_tokens:
            tokens.embedding.vectors.requires_grad_(train_tokens)
        self.concepts = list(concepts)
        for regularizer in regularizers or []:
            if self.family.name not in regularizer.families:
                what = f"Regularizer {regularizer.name!r}"
                raise ValueError(family_error(self.family, what, regularizer.families))
        self.regularizers = nn.ModuleList(regularizers or [])
        self.optimizer_factory = optimizer
        self.learning_rates = dict(learning_rates or {})
        self.scale_lr = scale_lr
        if lr_warmup_steps < 0:
            raise ValueError(f"lr_warmup_steps must be >= 0 (0: none), got {lr_warmup_steps}.")
        self.lr_warmup_steps = lr_warmup_steps
        self.lr_scheduler_factory = lr_scheduler
        self.cache_latents = cache_latents
        if not math.isfinite(noise_offset) or noise_offset < 0:
            raise ValueError(f"noise_offset must be finite and >= 0 (0 off), got {noise_offset}.")
        self.noise_offset = noise_offset
        if prior_loss_weight < 0:
            raise ValueError(f"prior_loss_weight must be >= 0 (0 off), got {prior_loss_weight}.")
        self.prior_loss_weight = prior_loss_weight
        check_min_snr_gamma(min_snr_gamma, flow, self.family.display_name)
        if background_loss_weight is not None and not 0.0 <= background_loss_weight <= 1.0:
            raise ValueError(
                f"background_loss_weight is a weight in [0, 1] (0: no loss on the background; "
                f"null: no masked loss), got {background_loss_weight}."
            )
        self.background_loss_weight = background_loss_weight
        self.min_snr_gamma = min_snr_gamma
        self.ema = ema
        if not validation_timesteps or not all(0 <= f < 1 for f in validation_timesteps):
            raise ValueError(
                f"validation_timesteps are fractions of the schedule in [0, 1), got "
                f"{list(validation_timesteps)}."
            )
        self.validation_timesteps = tuple(validation_timesteps)
        self.seed = seed
        self.evaluation = evaluation
        self.memory = memory
        self._memory_applied = False
        self.text_cache: ConstantTextCache | None = None  # memory.cache_text, set in setup
        self.strict_loading = False  # checkpoints hold only what trains
        self._latent_cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    # ----- what a baseline declares ---------------------------------------------------------
    @property
    def text_encoders(self) -> list[nn.Module]:
        """The family's text encoders in its order (SD 1.x: one; SDXL: two)."""
        return [getattr(self, name) for name in self.family.text_encoder_names]

    def trainable_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameter groups by name; each may get its own learning rate."""
        vectors = [t.embedding.vectors for t in self.encoder_concept_tokens]
        return {"tokens": vectors} if vectors[0].requires_grad else {}

    def export(self, folder: Path) -> list[Path]:
        """Write the learned weights in formats diffusers loads; return the files written."""
        raise NotImplementedError(f"{type(self).__name__} must implement export().")

    def frozen_components(self) -> list[nn.Module]:
        """The pretrained models whose frozen weights ``memory.frozen_dtype`` stores in half
        precision (a baseline with more, e.g. VisualEncoder's image encoder, adds them)."""
        return [self.unet, *self.text_encoders, self.vae]

    def trained_components(self) -> tuple[nn.Module, ...]:
        """Pretrained components that train as a whole and so run in train mode (none here)."""
        return ()

    # ----- documented methods regularizers may call ------------------------------------------
    def predict_noise(
        self,
        noisy_latents: torch.Tensor,
        timesteps: torch.Tensor,
        encoder_states: torch.Tensor | TextEncoding,
        time_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One denoiser call; returns the prediction in the objective's parameterisation
        (DDPM: epsilon or v; flow matching: the velocity), in the latents' layout.

        ``encoder_states``: the states (SD 1.x), or the `TextEncoding` itself, which families
        with pooled text (SDXL, FLUX) need; ``time_ids``: SDXL's size ids (None: uncropped images of
        the latents' size, see `size_ids`)."""
        text = encoder_states
        states = text.conditioning if isinstance(text, TextEncoding) else text
        if time_ids is None:
            time_ids = self.size_ids(None, noisy_latents)
        added = self.family.added_conditioning(text, time_ids)
        return self.family.run_denoiser(self.unet, noisy_latents, timesteps, states, added)

    def size_ids(self, batch: dict[str, Any] | None, latents: torch.Tensor) -> torch.Tensor | None:
        """The family's size conditioning of these latents' rows (None for SD 1.x)."""
        factor = self.vae_scale_factor
        size = (latents.shape[-2] * factor, latents.shape[-1] * factor)  # (height, width)
        return self.family.time_ids(batch, latents.shape[0], size, latents.device)

    def text_projection(self, clip_model: str | None = None) -> nn.Linear:
        """CLIP's frozen text projection for this text encoder's pooled features (PDLoss, SPL).

        ``clip_model`` None picks the CLIP whose text tower the text encoder is (tiny-clip for
        tiny-sd, openai/clip-vit-large-patch14 otherwise). Loaded once per module and shared
        by the losses that ask; kept out of the state dict (it never trains).
        """
        name = clip_model or default_clip_for(self.pretrained_model_name_or_path)
        cache = self.__dict__.setdefault("_text_projections", {})
        if name not in cache:
            cache[name] = load_text_projection(name, self.text_encoder.config.hidden_size)
        if cache[name].weight.device != self.device:  # not a state-dict member: move by hand
            cache[name].to(self.device)
        return cache[name]

    def export_token_embeddings(
        self,
        path_for_concept: dict[str, Path],
        a1111_only: bool = False,
        folder: Path | None = None,
    ) -> list[Path]:
        """Save each concept's vectors, and as A1111 / ComfyUI embeddings in ``a1111/``
        (``a1111_only``: only those, in ``folder``).

        SD 1.x: ``{token: (num_vectors, dim)}`` (diffusers' ``load_textual_inversion`` reads
        it); SDXL: ``{"clip_l": ..., "clip_g": ...}`` (FLUX: ``clip_l``, ``t5``, as diffusers'
        advanced FLUX script writes them), each encoder's vectors, the layout A1111
        and ComfyUI read for SDXL (and ``load_into`` gives each encoder its own)."""
        written = []
        for index, concept in enumerate(self.concepts):
            path = None if a1111_only else path_for_concept[concept.token]
            where = folder if path is None else path.parent
            vectors = [
                t.vectors_of(index).detach().float().cpu().contiguous()
                for t in self.encoder_concept_tokens
            ]
            if len(vectors) == 1:
                if path is not None:
                    save_file({concept.token: vectors[0]}, str(path))
                    written.append(path)
                written.append(write_a1111_embedding(vectors[0], where, concept.token))
            else:
                copy = where / A1111_FOLDER / f"{a1111_name(concept.token)}.safetensors"
                targets = [copy] if path is None else [path, copy]
                keys = self.family.embedding_keys
                written += [write_sdxl_embedding(vectors, t, concept.token, keys) for t in targets]
        return written

    # ----- the training step ------------------------------------------------------------------
    def sample_draws(
        self, batch: dict[str, Any], step: int, salt: int = INSTANCE_SALT, seed: int | None = None
    ) -> SampleDraws:
        """Each sample's own random draws, keyed by its ``sample_key`` (step/draws.py).

        A batch without keys (built by hand) is keyed by (step, rank, position) instead.
        """
        keys = batch.get("sample_key")
        if keys is None:
            rank = self.global_rank if self._trainer is not None else 0
            base = (step * 1009 + rank) * 4096
            keys = [-1 - (base + i) for i in range(len(batch["prompts"]))]  # never a stream key
        return SampleDraws(self.seed if seed is None else seed, keys, salt, self.device)

    def step_generator(self, step: int, salt: int = 0) -> torch.Generator:
        """One generator for draws not tied to a sample (MLM's captions), seeded by (step, rank)."""
        generator = torch.Generator(device=self.device)
        rank = self.global_rank if self._trainer is not None else 0
        generator.manual_seed(((self.seed * 1_000_003 + step) * 1009 + rank) * 7 + salt)
        return generator

    def encode_latents(
        self, pixel_values: torch.Tensor, cache_keys: list[str] | None, draws: SampleDraws
    ) -> torch.Tensor:
        """VAE latents (scaled), sampled from cached distributions where the image allows."""
        use_cache = self.cache_latents and cache_keys is not None and all(cache_keys)
        with torch.no_grad():
            if use_cache:
                for i, key in enumerate(cache_keys):
                    if key not in self._latent_cache:
                        # One image at a time: the cached values must not depend on which batch
                        # an image first came in, or a resumed run would differ in the last bits.
                        dist = self.vae.encode(pixel_values[i : i + 1]).latent_dist
                        self._latent_cache[key] = (dist.mean[0].float(), dist.std[0].float())
                mean = torch.stack([self._latent_cache[k][0] for k in cache_keys])
                std = torch.stack([self._latent_cache[k][1] for k in cache_keys])
            else:
                dist = self.vae.encode(pixel_values).latent_dist
                mean, std = dist.mean.float(), dist.std.float()
        sample = mean + std * draws.randn(mean.shape[1:]).to(mean.dtype)
        return self.family.scale_latents(self.vae, sample)

    def latent_loss_mask(self, pixel_mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """A latent cell counts only if its whole pixel footprint is valid (min-pooling)."""
        return -F.adaptive_max_pool2d(-pixel_mask.float(), size)

    def denoise(
        self,
        batch: dict[str, Any],
        draws: SampleDraws,
        with_prior: bool = True,
        text_requests: dict[int, list[TextRequest]] | None = None,
        timesteps: torch.Tensor | None = None,
    ) -> StepRecord:
        """Noise the latents, run the UNet once on the prompts, and record everything.

        With prior preservation on (and ``with_prior``), the class samples join the same call.
        ``text_requests`` (by requester id): encoded in the prompts' own text-encoder call and
        handed back in the record's ``requested_text``.
        """
        latents = self.encode_latents(batch["pixel_values"], batch.get("cache_key"), draws)
        num_instances, prompts = latents.shape[0], list(batch["prompts"])
        if with_prior and self.prior_loss_weight > 0:  # class samples join the same UNet call
            if "class_pixel_values" not in batch:
                raise KeyError(
                    "prior_loss_weight > 0 but the batch has no class images; the DataModule "
                    "builds them when the module's setup requests them (fit with a datamodule)."
                )
            prior_draws = draws.with_salt(PRIOR_SALT)
            class_pixels, class_keys = batch["class_pixel_values"], batch.get("class_cache_key")
            size = tuple(batch["pixel_values"].shape[-2:])
            if tuple(class_pixels.shape[-2:]) != size:  # an aspect bucket: the same shape
                class_pixels = cover_crop(class_pixels, size)
                class_keys = class_keys and [f"{k}@{size[1]}x{size[0]}" for k in class_keys]
            class_latents = self.encode_latents(class_pixels, class_keys, prior_draws)
            draws = draws + prior_draws
            latents = torch.cat([latents, class_latents])
            prompts += list(batch["class_prompts"])
        noise = draws.randn(latents.shape[1:])
        if self.noise_offset:
            offset = draws.randn(latents.shape[1:2])
            noise = noise + self.noise_offset * offset[..., None, None]
        if timesteps is None:  # (given: the validation loss's fixed ones)
            timesteps = self.family.draw_timesteps(draws, self.noise_scheduler)
        noisy_latents, target = self.family.noised_and_target(
            self.noise_scheduler, latents, noise, timesteps
        )
        requests = text_requests or {}
        flat = [request for wanted in requests.values() for request in wanted]
        text, encoded = self.encode_step_text(prompts, flat)
        requested_text, start = {}, 0
        for owner, wanted in requests.items():
            requested_text[owner] = list(zip(wanted, encoded[start : start + len(wanted)]))
            start += len(wanted)
        time_ids = self.size_ids(batch, noisy_latents)
        model_pred = self.predict_noise(noisy_latents, timesteps, text, time_ids)
        pixel_mask = batch.get("loss_mask")
        if pixel_mask is None:
            loss_mask = torch.ones_like(latents[:, :1])
        else:
            loss_mask = self.latent_loss_mask(pixel_mask, latents.shape[-2:])
        if loss_mask.shape[0] < latents.shape[0]:  # class images carry no mask: all valid
            loss_mask = torch.cat([loss_mask, torch.ones_like(latents[num_instances:, :1])])
        record = StepRecord(
            latents=latents,
            noisy_latents=noisy_latents,
            timesteps=timesteps,
            noise=noise,
            target=target,
            model_pred=model_pred,
            encoder_hidden_states=text.hidden_states,
            layer_states=text.layer_states,
            input_ids=text.input_ids,
            loss_mask=loss_mask,
            batch=batch,
            text_embeds=text.text_embeds,
            time_ids=time_ids,
            clip_pooled=text.clip_pooled,
            clip_states=text.clip_states,
            states_follow_ids=text.states_follow_ids,
            requested_text=requested_text,
            loss_weights=self.loss_weights(timesteps),
        )
        return split_prior(record, num_instances) if len(latents) > num_instances else record

    def loss_weights(self, timesteps: torch.Tensor) -> torch.Tensor | None:
        """Each sample's weight in the denoising loss: the flow-matching scheme's, or
        Min-SNR's on DDPM when ``min_snr_gamma`` is set (None: all 1)."""
        if self.min_snr_gamma is not None:
            return min_snr_weights(self.noise_scheduler, timesteps, self.min_snr_gamma)
        return self.family.loss_weights(self.noise_scheduler, timesteps)

    def subject_weights(self, record: StepRecord) -> torch.Tensor | None:
        """The masked loss's per-latent-cell weights of the instance samples: 1 on the
        subject, ``background_loss_weight`` elsewhere, by the share of each cell's pixels that
        are subject (None when the masked loss is off)."""
        if self.background_loss_weight is None:
            return None
        subject = record.batch["subject_mask"].to(record.latents)
        share = F.adaptive_avg_pool2d(subject, record.latents.shape[-2:])
        return share + self.background_loss_weight * (1 - share)

    def denoising_loss(
        self, record: StepRecord, weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Mean squared error over the valid (mask = 1) latent elements of each sample,
        weighted per latent cell by ``weights`` (the masked loss) and per sample where the
        objective weights them (flow matching's scheme, Min-SNR)."""
        error = F.mse_loss(record.model_pred.float(), record.target.float(), reduction="none")
        mask = record.loss_mask.float()
        if weights is not None:
            mask = mask * weights.float()
        valid = (mask.sum(dim=(1, 2, 3)) * error.shape[1]).clamp(min=1.0)
        per_sample = (error * mask).sum(dim=(1, 2, 3)) / valid
        if record.loss_weights is not None:
            per_sample = per_sample * record.loss_weights.to(per_sample)
        return per_sample.mean()

    def compute_losses(self, batch: dict[str, Any], draws: SampleDraws) -> dict[str, Any]:
        """Unweighted parts by name plus ``total`` = denoise + sum of weight x regularizer."""
        requests = {id(r): r.text_requests(batch, self) for r in self.regularizers}
        record = self.denoise(batch, draws, text_requests=requests)
        parts = {"denoise": self.denoising_loss(record, self.subject_weights(record))}
        total = parts["denoise"]
        if record.prior is not None:
            parts["prior"] = self.denoising_loss(record.prior)
            total = total + self.prior_loss_weight * parts["prior"]
        for regularizer in self.regularizers:
            parts[regularizer.name] = regularizer(record, self)
            total = total + regularizer.weight * parts[regularizer.name]
        return {"parts": parts, "total": total}

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        losses = self.compute_losses(batch, self.sample_draws(batch, self.global_step))
        weights = {r.name: r.weight for r in self.regularizers}
        weights["prior"] = self.prior_loss_weight
        check_loss_parts({**losses["parts"], "total": losses["total"]}, weights, self.global_step)
        batch_size = len(batch["prompts"])
        for name, value in losses["parts"].items():
            self.log(f"train/loss/{name}", value.detach(), batch_size=batch_size)
        self.log("train/loss", losses["total"].detach(), prog_bar=True, batch_size=batch_size)
        return losses["total"]

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """The plain denoising MSE at each of ``validation_timesteps`` with each photo's own
        fixed noise, with the weights sampling uses (the EMA's when on); logged per timestep
        (``val/loss/t<t>``) and as their mean (``val/loss``)."""
        # The same noise whatever the run's seed, so runs compare on the same draws.
        draws = self.sample_draws(batch, batch_idx, VALIDATION_SALT, seed=0)
        size = len(batch["prompts"])
        steps = self.noise_scheduler.config.num_train_timesteps
        losses = []
        with self.averaged_weights():
            for fraction in self.validation_timesteps:
                t = fraction * steps
                t = t if isinstance(self.family, FlowMatchingFamily) else round(t)
                fixed = torch.full((size,), t, device=self.device)
                record = self.denoise(batch, draws, with_prior=False, timesteps=fixed)
                record.loss_weights = None  # the plain MSE, comparable across options
                losses.append(self.denoising_loss(record))
                self.log(f"val/loss/t{round(fraction * steps)}", losses[-1], batch_size=size)
        self.log("val/loss", torch.stack(losses).mean(), batch_size=size, prog_bar=True)

    # ----- lifecycle --------------------------------------------------------------------------
    def batch_requirements(self) -> dict[str, frozenset[str]]:
        """Batch keys each part needs beyond the base ones, by who needs them."""
        needs = {
            f"Regularizer {r.name!r}": frozenset(r.requires)
            for r in self.regularizers
            if r.requires
        }
        if self.prior_loss_weight > 0:
            needs[PRIOR_REQUESTER] = PRIOR_BATCH_KEYS
        if self.background_loss_weight is not None:
            needs[MASKED_LOSS_REQUESTER] = frozenset({"subject_mask"})
        if self.family.batch_keys():
            needs[f"The {self.family.name} backbone's conditioning"] = self.family.batch_keys()
        return needs

    def setup(self, stage: str) -> None:
        """Apply the memory switches; ask the DataModule to build the batch data the
        regularizers (and baseline) need."""
        self.apply_memory_settings()
        for regularizer in self.regularizers:
            # A regularizer that loads helpers (e.g. the text projection) or checks the model
            # does it here, so bad settings fail before the first step.
            regularizer.prepare(self)
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer else None
        if datamodule is not None and hasattr(datamodule, "request"):
            self.attach_datamodule(datamodule, stage)

    def apply_memory_settings(self) -> None:
        """The ``memory`` switches, once; by now every trained parameter exists (the baselines
        make theirs in ``__init__``), so "frozen" means exactly what does not train."""
        if self._memory_applied:
            return
        settings = self.memory
        if self._trainer is not None:
            check_mixed_precision(settings, self.trainer.precision)
        if settings.quantize_denoiser is not None:  # from fp32 weights, before any half cast
            quantize_frozen_linears(self.unet, settings.quantize_denoiser)
        if settings.half is not None:
            called = self.frozen_components()
            store_frozen_in(called, settings.half)
            # The VAE is used through encode/decode, not its forward: hook what they call.
            parts = [p for m in called for p in (m.children() if m is self.vae else [m])]
            autocast_calls(parts, settings.half)
        if settings.gradient_checkpointing:
            enable_gradient_checkpointing(self.unet, *self.text_encoders)
        if settings.cache_text:
            check_text_is_frozen(self)
            self.text_cache = ConstantTextCache()
        if settings.compile_unet:
            self.unet.compile(backend=settings.compile_backend)
        self._memory_applied = True

    def check_resolution(self, resolution: Any) -> None:
        """A side the VAE can take: a multiple of its downsampling factor."""
        factor = self.family.pixel_multiple(self.vae_scale_factor)
        if isinstance(resolution, int) and resolution % factor:
            packing = "" if factor == self.vae_scale_factor else " times the 2x2 latent packing"
            raise ValueError(
                f"resolution {resolution} is not a multiple of {factor}, the VAE's downsampling "
                f"factor{packing} of {self.pretrained_model_name_or_path!r}; use e.g. "
                f"{max(factor, resolution - resolution % factor)}."
            )

    def data_requirements(self, stage: str = "fit") -> dict[str, frozenset[str]]:
        """The batch keys each requester needs in ``stage`` (only training steps run the
        class half, so prior preservation asks for nothing outside fit)."""
        requirements = self.batch_requirements()
        if stage != "fit":
            requirements.pop(PRIOR_REQUESTER, None)
            requirements.pop(MASKED_LOSS_REQUESTER, None)
        return requirements

    def image_pipeline(self) -> ModuleImagePipeline:
        """The (still untrained) model as the DataModule's image maker: class images and
        CLIF's general concepts are generated through it in the DataModule's setup."""
        return ModuleImagePipeline(self)

    def attach_datamodule(self, datamodule: Any, stage: str = "fit") -> None:
        """What setup does with the DataModule: request the batch data the regularizers (and
        baseline) need (the DataModule's setup has made missing class images by now)."""
        self.check_resolution(getattr(datamodule, "resolution", None))
        for who, keys in self.data_requirements(stage).items():
            datamodule.request(keys, who)

    def prefill_regularizers(self, datamodule: Any) -> None:
        """Let the regularizers encode the constant texts the DataModule can give (once the
        module sits on its training device, so the encodings are made there)."""
        for regularizer in self.regularizers:
            regularizer.prefill(self, datamodule)

    def on_fit_start(self) -> None:
        """memory.cache_text: the text encoders go back to the CPU once Lightning has moved
        the module to its device (encoding runs there; outputs come to the device)."""
        if self.memory.cache_text:
            for encoder in self.text_encoders:
                encoder.to("cpu")

    def on_train_start(self) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None:
            self.prefill_regularizers(datamodule)

    def train(self, mode: bool = True) -> PersonalizationModule:
        """Frozen components stay in eval mode whatever Lightning asks of the module."""
        super().train(mode)
        trained = {id(m) for m in self.trained_components()}
        for component in (*self.text_encoders, self.vae, self.unet):
            if id(component) not in trained:
                component.eval()
        return self
