"""A stand-in for PersonalizationModule in the regularizers' formula tests.

Text features and noise predictions are constructed (every prompt has given token ids and
hidden states; the "UNet" is a closed-form function), so a test can compute the paper's formula
by hand from the same numbers and compare it with what the loss returns.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from diffusers import DDPMScheduler
from torch import nn

from backbones import FAMILIES
from core.concept import ConceptSpec
from step.encoding import TextEncoding
from step.record import StepRecord

BOS, EOS, CONCEPT_ID = 1, 9, 7
LENGTH, WIDTH = 6, 5  # token positions, hidden size
CHANNELS, SIDE = 4, 2  # latent shape (C, h, w)


class FakeTokenizer:
    eos_token_id = EOS

    def convert_tokens_to_ids(self, tokens: list[str]) -> list[int]:
        return [CONCEPT_ID if t == "<v1>" else 99 for t in tokens]


def sd_scheduler() -> DDPMScheduler:
    """SD 1.5's training schedule (scaled-linear betas 0.00085..0.012 over 1000 steps)."""
    return DDPMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"
    )


def sd_betas() -> np.ndarray:
    """The same betas written out from their definition, independently of diffusers."""
    return np.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=np.float64) ** 2


def token_ids(words: int, first_word: int = 20) -> list[int]:
    """BOS, ``words`` word ids, EOS, then EOS padding (CLIP pads with end-of-text)."""
    ids = [BOS] + [first_word + i for i in range(words)] + [EOS]
    return ids + [EOS] * (LENGTH - len(ids))


class FakeModule:
    """``encode_text`` looks prompts up in ``texts``; ``predict_noise`` is
    e(x, t, c) = scale * x + c[:, 0, :C] broadcast over (h, w)."""

    def __init__(
        self,
        texts: dict[str, tuple[list[int], torch.Tensor]],
        projection: torch.Tensor | None = None,
        scale: float = 0.5,
    ) -> None:
        self.tokenizer = FakeTokenizer()
        self.concepts = [ConceptSpec("<v1>", "dog")]
        self.text_encoder = nn.Linear(1, 1).requires_grad_(False)
        self.text_encoders = [self.text_encoder]
        self.device = torch.device("cpu")
        self.noise_scheduler = sd_scheduler()
        self.family = FAMILIES["sd1"]  # the losses ask it for the objective
        self.texts = texts
        ids = [tuple(ids) for ids, _ in texts.values()]
        assert len(set(ids)) == len(ids), "each prompt needs its own ids (encodings look them up)"
        self.scale = scale
        self.projection = None
        if projection is not None:
            self.projection = nn.Linear(projection.shape[1], projection.shape[0], bias=False)
            self.projection.weight.data.copy_(projection)
            self.projection.requires_grad_(False)
        self.encoded: list[list[str]] = []
        self.unet_calls: list[dict[str, Any]] = []

    def encode_text(self, prompts: list[str]) -> TextEncoding:
        return self.encode_token_ids(self.tokenize(prompts))

    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        return torch.tensor([self.texts[p][0] for p in prompts])

    def encode_token_ids(
        self, input_ids: torch.Tensor, extra_vectors: torch.Tensor | None = None
    ) -> TextEncoding:
        """The given states of the prompt each row's ids begin (prompts' ids are distinct)."""
        width = input_ids.shape[1]
        by_ids = {tuple(ids[:width]): prompt for prompt, (ids, _) in self.texts.items()}
        prompts = [by_ids[tuple(row)] for row in input_ids.tolist()]
        self.encoded.append(prompts)
        hidden = torch.stack([self.texts[p][1][:width] for p in prompts])
        return TextEncoding(hidden_states=hidden, input_ids=input_ids)

    def predict_noise(
        self,
        latents: torch.Tensor,
        timesteps: torch.Tensor,
        states: torch.Tensor | TextEncoding,
    ) -> torch.Tensor:
        """The base's contract: the states, or the `TextEncoding` itself (its conditioning)."""
        if isinstance(states, TextEncoding):
            states = states.conditioning
        out = self.scale * latents + states[:, 0, : latents.shape[1], None, None]
        self.unet_calls.append({"size": latents.shape[0], "grad": out.requires_grad})
        return out

    def text_projection(self, clip_model: str | None = None) -> nn.Linear:
        assert self.projection is not None
        return self.projection


def random_texts(
    prompts: list[str], generator: torch.Generator, words: int = 3
) -> dict[str, tuple[list[int], torch.Tensor]]:
    """Each prompt: ids BOS, words, EOS, pads; hidden states random leaves that track grads."""
    return {
        p: (
            token_ids(words, first_word=20 + i * words),  # distinct ids: encodings look them up
            torch.randn(LENGTH, WIDTH, generator=generator).requires_grad_(),
        )
        for i, p in enumerate(prompts)
    }


def record_for(
    batch: dict[str, Any],
    timesteps: list[int],
    generator: torch.Generator,
    model_pred: torch.Tensor | None = None,
    encoding: TextEncoding | None = None,
) -> StepRecord:
    """A step record with random latents and the given batch and timesteps."""
    size = len(timesteps)
    noisy = torch.randn(size, CHANNELS, SIDE, SIDE, generator=generator)
    pred = model_pred if model_pred is not None else torch.randn(noisy.shape, generator=generator)
    hidden = encoding.hidden_states if encoding is not None else torch.zeros(size, LENGTH, WIDTH)
    ids = encoding.input_ids if encoding is not None else torch.zeros(size, LENGTH).long()
    return StepRecord(
        latents=torch.zeros_like(noisy),
        noisy_latents=noisy,
        timesteps=torch.tensor(timesteps),
        noise=torch.zeros_like(noisy),
        target=torch.zeros_like(noisy),
        model_pred=pred,
        encoder_hidden_states=hidden,
        input_ids=ids,
        loss_mask=torch.ones(size, 1, SIDE, SIDE),
        batch=batch,
    )
