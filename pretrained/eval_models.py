"""Load an evaluation model offline, or fail with an error that says how to provide it.

Names are hub ids (loaded from the local Hugging Face cache; downloads need network), local
folders, or the ``tiny-*`` test models. Loaded models are shared: CLIP-T and CLIP-I read the
same CLIP, DINO-I and DINO-FG the same DINO.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from pretrained.hub import HubUnavailableError, looks_like_path

T = TypeVar("T")
_LOADED: dict[tuple[str, str, str], Any] = {}


class EvalModelNotFoundError(FileNotFoundError):
    """An evaluation model could not be loaded from what is on this machine."""


def _hub_cache() -> str:
    try:
        from huggingface_hub.constants import HF_HUB_CACHE

        return str(HF_HUB_CACHE)
    except ImportError:  # pragma: no cover - huggingface_hub comes with transformers
        return "~/.cache/huggingface/hub"


def not_found_message(name: str, what: str, option: str, reason: str) -> str:
    """The how-to-provide-it-offline text every metric uses."""
    return (
        f"{what} needs the model {name!r}, which cannot be loaded here ({reason}).\n"
        "Evaluation models load offline. Either\n"
        f"  - download it once where there is network (`huggingface-cli download {name}`) and "
        f"copy the Hugging Face cache here (this machine reads {_hub_cache()}; set HF_HOME to "
        "move it), or\n"
        f"  - save it to a folder (`.save_pretrained(folder)`, or a hub snapshot) and set {option} "
        "to that folder, or\n"
        f"  - for a smoke test, set {option} to its tiny random twin (tiny-clip, tiny-dino, "
        "tiny-blip, tiny-blip2, tiny-blip-captioner, tiny-grounding-dino, tiny-sam, tiny-vgg, "
        "tiny-arcface)."
    )


def load_eval_model(name: str, loader: Callable[[str], T], what: str, option: str) -> T:
    """``loader(path)`` on the resolved name, cached; errors become `EvalModelNotFoundError`.

    Args:
        name: hub id, folder, or tiny-* name.
        loader: builds the model (and processor) from a path or hub id.
        what: who needs it, for the message (e.g. "DINO-I").
        option: the config option that names it (e.g. "evaluation.metrics.dino_model").
    """
    from pretrained.tiny_eval_models import resolve_eval_model  # builds tiny-* models on first use

    try:
        path = resolve_eval_model(name)
    except HubUnavailableError:
        reason = "not in the local Hugging Face cache, and the hub cannot be reached"
        raise EvalModelNotFoundError(not_found_message(name, what, option, reason)) from None
    key = (what, getattr(loader, "__qualname__", repr(loader)), path)
    if key in _LOADED:
        return _LOADED[key]
    if looks_like_path(path) and not Path(path).expanduser().exists():
        raise EvalModelNotFoundError(not_found_message(name, what, option, "no such folder"))
    try:
        loaded = loader(str(Path(path).expanduser()) if looks_like_path(path) else path)
    except (OSError, ValueError) as error:
        reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        raise EvalModelNotFoundError(not_found_message(name, what, option, reason)) from error
    _LOADED[key] = loaded
    return loaded


def clear_loaded_models() -> None:
    """Forget the shared models (tests that rebuild the tiny cache call this)."""
    _LOADED.clear()
