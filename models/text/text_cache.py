"""``memory.cache_text``: the frozen text path's outputs kept per prompt, and the text
encoders kept off the training device.

When nothing in the text path trains (LoRA's default: no token vectors, no text-encoder
LoRA), a prompt's encoding never changes, so each distinct prompt is encoded once and its
states reused (FrozenPromptCache, concept prompts included: their vectors are frozen too).
The encoders then sit on the CPU: FLUX's T5-XXL alone is 9.5 GB in bf16, more than the rest
of a quantized FLUX LoRA step needs. Prompts the cache has not seen (a callback's, a loss's
request) are encoded there and their outputs moved to the training device.
"""

from __future__ import annotations

from typing import Any

import torch

from losses.prompt_cache import FrozenPromptCache, text_encoder_frozen
from step.encoding import TextEncoding


class ConstantTextCache(FrozenPromptCache):
    """A prompt cache the module has checked may keep concept prompts too."""

    def _bypassed(self, module: Any, prompts: list[str]) -> bool:
        return False

    def encode_prompts(self, module: Any, prompts: list[str]) -> TextEncoding:
        """``prompts``' encodings, encoding the missing ones through the token-id path."""
        missing = self.missing(module, prompts)
        fresh = module.encode_token_ids(module.tokenize(missing)) if missing else None
        return self.encode(module, prompts, fresh)


def check_text_is_frozen(module: Any) -> None:
    """memory.cache_text keeps encodings: refuse it where the text path trains."""
    tokens = any(t.embedding.vectors.requires_grad for t in module.encoder_concept_tokens)
    if tokens or not text_encoder_frozen(module):
        what = "the concept token vectors" if tokens else "text-encoder weights (LoRA)"
        raise ValueError(
            f"memory.cache_text keeps each prompt's text encoding, but {what} train in this "
            "run, so encodings change every step: set memory.cache_text false, or train "
            "neither (train_tokens: false, train_text_encoder: false)."
        )


def moved(encoding: TextEncoding, device: torch.device) -> TextEncoding:
    """The encoding's tensors on ``device``."""
    fields = {
        name: value.to(device) if isinstance(value, torch.Tensor) else value
        for name, value in vars(encoding).items()
    }
    return TextEncoding(**fields)
