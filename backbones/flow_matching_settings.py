"""The options of the flow-matching objective (backbones/flow_matching.py), on their own so
that every family can check them (a DDPM family refuses changed ones)."""

from __future__ import annotations

from dataclasses import dataclass

WEIGHTING_SCHEMES = ("none", "logit_normal", "mode", "sigma_sqrt", "cosmap")


@dataclass(frozen=True)
class FlowMatchingSettings:
    """The objective's options on a flow-matching backbone (ignored nowhere: a DDPM backbone
    refuses them when changed).

    Args:
        weighting_scheme: diffusers' ``--weighting_scheme``: how sigma is drawn
            (``logit_normal``, ``mode``; the others uniform) and how each sample's loss is
            weighted (``sigma_sqrt``: 1 / sigma^2, ``cosmap``; the others 1). ``none`` is
            diffusers' FLUX scripts' default.
        logit_mean, logit_std: the logit-normal density's parameters.
        mode_scale: the "mode" density's scale.
        guidance_scale: the guidance a guidance-distilled model (FLUX.1-dev) is given during
            training (None: 3.5, diffusers' FLUX scripts' default); a model without a guidance
            input (schnell) refuses a value.
    """

    weighting_scheme: str = "none"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    mode_scale: float = 1.29
    guidance_scale: float | None = None

    def __post_init__(self) -> None:
        if self.weighting_scheme not in WEIGHTING_SCHEMES:
            raise ValueError(
                f"model.init_args.flow_matching.weighting_scheme is {self.weighting_scheme!r}; "
                f"use one of {', '.join(WEIGHTING_SCHEMES)}."
            )
        if self.logit_std <= 0:
            raise ValueError(
                f"model.init_args.flow_matching.logit_std must be > 0, got {self.logit_std}."
            )


DEFAULT_TRAINING_GUIDANCE = 3.5
