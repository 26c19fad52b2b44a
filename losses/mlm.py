"""The diverse-context paper's masked language modelling loss, ``mlm`` (Sec. 4.1-4.2, Eq. 5).

    L_mlm = mean over masked positions m of  -log softmax(psi(Gamma(P_masked)))[m, y_m]

Each step draws its own caption batch of ``mlm_batch_size`` context-rich prompts ("a photo of
a <v1> dog wearing a red scarf, at sunset"), independent of the image batch, as the authors'
code does (25 captions a step; 12 for P+): a concept uniformly, then one of its pool's prompts,
from the step's generator, so a resumed run draws the same ones (``mlm_batch_size: null``
takes the image batch's ``context_prompts`` instead, one per sample). It masks each of their
tokens with probability rho = 15% -- never
the concept token(s), never the class word, never start/end-of-text or padding -- replacing it
by the frozen ``[MASK]`` vector, encodes them through the module's personalized text path
(`PersonalizationModule.encode_token_ids`: concept vectors injected, the text encoder as the
baseline has it), and scores the frozen contextualizer psi's prediction of the original tokens
at the masked positions only. Gradients reach what the baseline trains through the text path
(the concept tokens; the text encoder for DreamBooth). psi (parameters with requires_grad off)
and ``[MASK]`` (a non-persistent buffer) are frozen: no gradient, not in the optimizer, not in
checkpoints, psi always in eval mode. A batch in which nothing was masked adds exactly 0.
With XTI/P+ each caption is encoded once per cross-attention layer's token (``every_layer``,
the authors' choice) and the cross-entropy is the mean over all layers' masked positions.
Cost per step: the masked prompts join the step's own text-encoder call (a text request), then
one psi pass, its vocabulary-wide head at the masked positions only.

On SDXL psi reads the first encoder's last-layer states (``TextEncoding.clip_text_states``):
that encoder is CLIP ViT-L, the text encoder psi is pretrained on (SD 1.5's own, the same
weights in SDXL base), and its ``[MASK]`` vector lives in that encoder's embedding space. The
second encoder is not regularized (its rows read zeros at the masked ids; the step's
conditioning is not what MLM scores). docs/DESIGN.md, "MLM on SDXL".

psi and ``[MASK]`` come from the pretraining run (``configs/diverse_context/contextualizer.yaml``),
read from its default place for the module's base model unless ``contextualizer_dir`` is given.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from components.contextualizer.network import Contextualizer, padding_after_eos
from components.contextualizer.store import (
    check_compatible,
    default_contextualizer_dir,
    load_contextualizer,
    pretraining_command,
)
from components.text_masking import (
    apply_mask,
    draw_mask,
    masked_cross_entropy,
    occurrences,
    prompt_positions,
    trim_padding,
)
from losses.base import Regularizer
from step.encoding import TextEncoding
from step.record import StepRecord
from step.requests import TextRequest, encode_request

if TYPE_CHECKING:
    from losses.model_view import ModelView

MASK_SALT = 5  # step_generator salt of the masking draws (0: training noise, 1: validation)
CAPTION_SALT = 6  # ... and of the caption batch's draws


def protected_sequences(module: ModelView) -> list[list[int]]:
    """The token ids of each concept token and class word (what MLM must never mask)."""
    return [
        module.tokenizer(text, add_special_tokens=False).input_ids
        for concept in module.concepts
        for text in (concept.token, concept.class_word)
    ]


def protected_positions(
    module: ModelView,
    input_ids: torch.Tensor,
    sequences: list[list[int]] | None = None,
) -> torch.Tensor:
    """True at every concept token (any id past the base vocabulary, and each concept token's
    own ids in case a baseline reuses a word) and every occurrence of a concept's class word:
    MLM never masks those. ``sequences``: `protected_sequences` computed once beforehand."""
    protected = input_ids >= module.text_encoder.config.vocab_size
    for ids in protected_sequences(module) if sequences is None else sequences:
        protected |= occurrences(input_ids, ids)
    return protected


class MaskedLanguageModelingLoss(Regularizer):
    """Cross-entropy of the frozen contextualizer at masked tokens of context-rich prompts."""

    name = "mlm"
    requires = frozenset({"context_prompts"})
    families = frozenset({"sd1", "sdxl", "flux"})  # SDXL, FLUX: CLIP ViT-L (see above)

    def __init__(
        self,
        weight: float = 1.0e-4,
        mask_probability: float = 0.15,
        contextualizer_dir: str | None = None,
        mlm_batch_size: int | None = 25,
        every_layer: bool = True,
    ) -> None:
        """
        Args:
            weight: lambda of L_diff + lambda L_mlm (the paper: TI 1e-5..5e-4 in its Table 3;
                see configs/diverse_context for each baseline's).
            mask_probability: rho, the chance each eligible token is masked (paper: 15%).
            contextualizer_dir: folder with contextualizer.safetensors + .json; None reads the
                pretraining run's default place for the module's base model.
            mlm_batch_size: captions drawn per step for this loss (the authors': 25, 12 for
                P+); None: the image batch's context-rich prompts, one per sample.
            every_layer: with XTI/P+, score every cross-attention layer's token variant of
                each caption (the authors'), batched in one text call; False: only the
                ``text_layer`` token. Other baselines have one variant either way.
        """
        super().__init__(weight)
        if not 0.0 <= mask_probability <= 1.0:
            raise ValueError(f"mask_probability must be in [0, 1], got {mask_probability}.")
        if mlm_batch_size is not None and mlm_batch_size < 1:
            raise ValueError(f"mlm_batch_size must be >= 1 (or null), got {mlm_batch_size}.")
        self.mask_probability = mask_probability
        self.mlm_batch_size = mlm_batch_size
        self.every_layer = every_layer
        self._pools: list[list[str]] | None = None  # each concept's captions, from prefill
        self.contextualizer_dir = contextualizer_dir
        self.contextualizer: Contextualizer | None = None
        self.register_buffer("mask_vector", torch.empty(0), persistent=False)
        self._loaded_from: Path | None = None
        # Ids never masked, tokenized once per module (tokenizing costs as much as a step's
        # tiny-model text pass); keyed by the module, whose concepts are fixed.
        self._protected: tuple[int, list[list[int]]] | None = None

    # ----- loading (from the module's setup, before the first step) ---------------------------
    def prepare(self, module: ModelView) -> None:
        """Load psi and ``[MASK]`` frozen; a missing export names the command that makes it."""
        name = module.pretrained_model_name_or_path
        folder = Path(self.contextualizer_dir or default_contextualizer_dir(name))
        if self._loaded_from == folder:
            return
        try:
            contextualizer, mask_vector, info = load_contextualizer(folder)
        except FileNotFoundError:
            how = (
                f"run `{pretraining_command(name)}` first (it exports there)"
                if self.contextualizer_dir is None
                else "point contextualizer_dir at a pretraining run's export folder"
            )
            raise FileNotFoundError(
                f"The mlm loss needs a pretrained contextualizer for {name!r}, but {folder} has "
                f"none: {how}."
            ) from None  # the message is the whole story (the folder's contents are named)
        check_compatible(info, module.tokenizer, module.text_encoder, folder)
        contextualizer.requires_grad_(False)
        self.contextualizer = contextualizer.eval().to(module.device)
        self.mask_vector = mask_vector.to(module.device).reshape(1, -1)
        self._loaded_from = folder

    def prefill(self, module: ModelView, datamodule: Any) -> None:
        """Read each concept's caption pool once, for the per-step caption batch."""
        if self.mlm_batch_size is None:
            return
        lister = getattr(datamodule, "prompt_pools", None)
        pools = lister("context_prompts") if lister is not None else None
        if not pools or not all(pools):
            raise ValueError(
                "The mlm loss draws its own caption batch (mlm_batch_size) from the DataModule's "
                "context-rich prompts, but this DataModule lists none; use the "
                "PersonalizationDataModule, or set mlm_batch_size: null to use the image batch's."
            )
        self._pools = pools

    def caption_batch(self, batch: dict[str, Any], module: ModelView) -> list[str]:
        """This step's captions: ``mlm_batch_size`` drawn from the pools (a concept, then one of
        its captions), or the image batch's own when there is no pool (a hand-built record, or
        ``mlm_batch_size`` null)."""
        if self.mlm_batch_size is None or self._pools is None:
            return list(batch["context_prompts"])
        generator = module.step_generator(module.global_step, salt=CAPTION_SALT)
        size, device = self.mlm_batch_size, generator.device
        concepts = torch.randint(len(self._pools), (size,), generator=generator, device=device)
        picks = torch.rand(size, generator=generator, device=device)
        captions = []
        for concept, pick in zip(concepts.tolist(), picks.tolist()):
            pool = self._pools[concept]
            captions.append(pool[min(int(pick * len(pool)), len(pool) - 1)])
        return captions

    def train(self, mode: bool = True) -> MaskedLanguageModelingLoss:
        """psi stays in eval mode (no dropout): it is a fixed scorer, not a trained part."""
        super().train(mode)
        if self.contextualizer is not None:
            self.contextualizer.eval()
        return self

    # ----- the loss ---------------------------------------------------------------------------
    def text_requests(
        self, batch: dict[str, Any], module: ModelView
    ) -> list[TextRequest]:
        """The step's caption batch, masked (masks drawn from the step's generator), for the
        step's text pass; none when nothing was masked."""
        generator = module.step_generator(module.global_step, salt=MASK_SALT)
        request = self.masked_request(module, self.caption_batch(batch, module), generator)
        return [] if request is None else [request]

    def forward(self, record: StepRecord, module: ModelView) -> torch.Tensor:
        found = self.requested_text(record, module)
        if not found:  # nothing masked: exactly 0
            return torch.zeros((), device=record.model_pred.device)
        return masked_cross_entropy(*self.scores(module, *found[0]))

    def mask_positions(
        self,
        module: ModelView,
        input_ids: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Where to mask: each prompt token with probability rho, except protected ones."""
        if self._protected is None or self._protected[0] != id(module):
            self._protected = (id(module), protected_sequences(module))
        protected = protected_positions(module, input_ids, self._protected[1])
        eligible = prompt_positions(input_ids, module.tokenizer.eos_token_id) & ~protected
        return draw_mask(eligible, self.mask_probability, generator)

    def masked_request(
        self,
        module: ModelView,
        prompts: list[str],
        generator: torch.Generator | None = None,
    ) -> TextRequest | None:
        """``prompts`` tokenized (padding cut), masked, with ``[MASK]`` as the extra vector;
        its note holds (original ids, masked positions). None if nothing was masked."""
        if self.contextualizer is None:
            raise RuntimeError(
                "The mlm loss has no contextualizer yet: the module's setup calls "
                "prepare(module); outside a Trainer call it yourself."
            )
        input_ids = trim_padding(module.tokenize(prompts), module.tokenizer.eos_token_id)
        masked = self.mask_positions(module, input_ids, generator)
        if not bool(masked.any()):
            return None
        masked_ids = apply_mask(input_ids, masked, len(module.tokenizer))
        return TextRequest(
            masked_ids,
            extra_vectors=self.mask_vector,
            note=(input_ids, masked),
            layer_variants=self.every_layer,
        )

    def scores(
        self, module: ModelView, request: TextRequest, encoding: TextEncoding
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(psi's logits at the masked positions, (N, vocab + 1); original ids; positions)."""
        assert self.contextualizer is not None  # masked_request checked it
        input_ids, masked = request.note
        masked_ids = request.input_ids
        variants = encoding.hidden_states.shape[0] // input_ids.shape[0]
        if variants > 1:  # every layer's copy of each caption (layer-major), same targets
            input_ids, masked = input_ids.repeat(variants, 1), masked.repeat(variants, 1)
            masked_ids = masked_ids.repeat(variants, 1)
        padding = padding_after_eos(masked_ids, module.tokenizer.eos_token_id)
        states = encoding.clip_text_states()  # CLIP ViT-L's, the states psi was trained on
        logits = self.contextualizer(states, padding_mask=padding, positions=masked)
        return logits, input_ids, masked

    def predictions(
        self,
        module: ModelView,
        prompts: list[str],
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """(psi's logits at the masked positions, (N, vocab + 1), or None if nothing was
        masked; the original ids; the masked positions), in one text pass of their own."""
        request = self.masked_request(module, prompts, generator)
        if request is None:
            input_ids = trim_padding(module.tokenize(prompts), module.tokenizer.eos_token_id)
            return None, input_ids, torch.zeros_like(input_ids, dtype=torch.bool)
        return self.scores(module, request, encode_request(module, request))

    def loss(
        self,
        module: ModelView,
        prompts: list[str],
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """L_mlm of ``prompts`` with masks drawn from ``generator``; 0 if nothing is masked."""
        logits, input_ids, masked = self.predictions(module, prompts, generator)
        if logits is None:
            return torch.zeros((), device=input_ids.device)
        return masked_cross_entropy(logits, input_ids, masked)

    @torch.no_grad()
    def evaluate(
        self, module: ModelView, prompts: list[str], seed: int = 0, batch_size: int = 32
    ) -> float:
        """Mean cross-entropy per masked token over ``prompts`` (e.g. held-out ones), with
        masks fixed by ``seed``: the same draws for every model compared."""
        generator = torch.Generator(device=module.device).manual_seed(seed)
        total, count = 0.0, 0
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            logits, input_ids, masked = self.predictions(module, chunk, generator)
            if logits is not None:
                n = int(masked.sum())
                total += float(masked_cross_entropy(logits, input_ids, masked)) * n
                count += n
        if count == 0:
            raise ValueError("No token of these prompts could be masked; give longer prompts.")
        return total / count
