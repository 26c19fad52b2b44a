"""The one small interface every regularizer implements.

A regularizer is an ``nn.Module`` with a ``name`` (its log key, ``train/loss/<name>``), a
``weight``, and the batch keys it ``requires``; ``forward(record, module)`` returns an unweighted
scalar. Text it must encode every step (with gradient to the concept tokens) it asks for in
``text_requests``: the module encodes it in the step's own text-encoder call, and ``forward``
reads it back with ``requested_text``. It reads only the step record and the base module's
documented methods (``encode_text``, ``predict_noise``, ...), never a baseline's internals, so
that a new loss is one new file in ``losses/`` plus a config line.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from step.encoding import TextEncoding
from step.record import StepRecord
from step.requests import TextRequest, encode_request

if TYPE_CHECKING:
    from losses.model_view import ModelView


class Regularizer(nn.Module):
    """Base class: subclasses set ``name`` and ``requires`` and implement ``forward``."""

    name: ClassVar[str] = "regularizer"
    # Batch keys beyond the always-present ones (pixel_values, prompts, ...).
    requires: ClassVar[frozenset[str]] = frozenset()
    # The backbone families (backbones/) its formula and code are written for; the module
    # refuses it on another with one line (a loss must be checked on a family to list it).
    families: ClassVar[frozenset[str]] = frozenset({"sd1"})

    def __init__(self, weight: float = 1.0) -> None:
        super().__init__()
        if not math.isfinite(weight) or weight < 0:
            raise ValueError(
                f"Regularizer {self.name!r} has weight {weight}; a weight is a finite number "
                ">= 0 (0 turns the loss off while still logging it)."
            )
        self.weight = weight

    def prepare(self, module: ModelView) -> None:
        """Called once from the module's setup before training (the default needs nothing).

        Load what the loss needs here, so a bad option fails at start rather than mid-run.
        """

    def prefill(self, module: ModelView, datamodule: Any) -> None:
        """Called from the module's setup once the DataModule builds the requested data: encode
        constant texts up front (``datamodule.possible_values(key)``; default: nothing)."""

    def text_requests(
        self, batch: dict[str, Any], module: ModelView
    ) -> list[TextRequest]:
        """Token ids to encode in this step's text pass (default: none). Called once per step
        before the pass; must be deterministic for a given batch, step and cache state."""
        return []

    def requested_text(
        self, record: StepRecord, module: ModelView
    ) -> list[tuple[TextRequest, TextEncoding]]:
        """This loss's requests with their encodings: from the step's pass, or, for a record
        made without them (a hand-built one), asked for and encoded now, one call each."""
        found = record.requested_text.get(id(self))
        if found is not None:
            return found
        requests = self.text_requests(record.batch, module)
        return [(request, encode_request(module, request)) for request in requests]

    def forward(self, record: StepRecord, module: ModelView) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement forward().")
