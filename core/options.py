"""Let a config class accept the options of another, so shared overlays apply to it unchanged.

``configs/tiny.yaml`` is one overlay for every experiment: it sets options of the personalization
module and DataModule (``data.init_args.instance_data_dir``, ``model.init_args.evaluation``,
...). The contextualizer's pretraining has its own module and DataModule, for which those
options mean nothing; `accepts_options_of` adds them to the class's signature (as keyword-only
parameters with their own types and defaults, read by LightningCLI / jsonargparse) and the
class receives them in ``**ignored``. New options of the personalization classes are accepted
automatically, so the overlay never has to know which experiment it is applied to.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T", bound=type)


def accepts_options_of(*others: type) -> Callable[[T], T]:
    """Class decorator: ``__init__`` (which must take ``**ignored``) also lists every
    parameter of each of ``others``' ``__init__`` that it does not have itself."""

    def decorate(cls: T) -> T:
        init = cls.__init__
        own = inspect.signature(init)
        if not any(p.kind is p.VAR_KEYWORD for p in own.parameters.values()):
            raise TypeError(f"{cls.__name__}.__init__ needs **ignored to accept shared options.")
        names = set(own.parameters)
        params = [p for p in own.parameters.values() if p.kind is not p.VAR_KEYWORD]
        hints: dict[str, Any] = typing.get_type_hints(init)
        for other in others:
            other_hints = typing.get_type_hints(other.__init__)
            for name, param in inspect.signature(other.__init__).parameters.items():
                if name in names or name == "self" or param.kind in (
                    param.VAR_POSITIONAL,
                    param.VAR_KEYWORD,
                ):
                    continue
                names.add(name)
                annotation = other_hints.get(name, Any)
                hints[name] = annotation
                params.append(param.replace(kind=param.KEYWORD_ONLY, annotation=annotation))
        init.__signature__ = own.replace(parameters=params)  # type: ignore[attr-defined]
        init.__annotations__ = {**hints, "return": None}
        return cls

    return decorate


# LightningCLI's subclass mode hands `--data.init_args.<group>.<field> null` to a dataclass
# field typed ``str | None`` as the string "None" (a config file's ``null`` arrives as None).
_NULL_WORDS = frozenset({"None", "null"})


def none_for_null(value: str | None) -> str | None:
    """None for the command line's ``null`` (see above); other values unchanged."""
    return None if value in _NULL_WORDS else value


def clear_null_strings(options: Any, *fields: str) -> None:
    """In a frozen dataclass's ``__post_init__``: each of ``fields`` through `none_for_null`."""
    for name in fields:
        object.__setattr__(options, name, none_for_null(getattr(options, name)))
