"""Per-sample batch extras: data the DataModule builds only when the module asks for it.

An extra adds keys to every sample (class images, the superclass prompt, context-rich prompts,
captions, ...). Each is one file in this package defining a `SampleExtra` subclass with the
keys it ``provides``; defining the class registers it, and the package's ``__init__`` imports
each file by name. When a regularizer or baseline
``requires`` a key, the module's ``setup`` calls ``datamodule.request(keys, who)``, which builds
the extra through ``from_datamodule`` (where it reads its DataModule options and raises a
clear error naming the option to set when one is missing).

Values must collate with torch's default collate: tensors of one shape, numbers, or strings
(a variable-length list per sample would be transposed: join it into one string instead).
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from datamodules.personalization import PersonalizationDataModule

_REGISTRY: dict[str, type[SampleExtra]] = {}


class SampleExtra:
    """Base class: set ``provides``; override ``from_datamodule`` and ``add``."""

    provides: ClassVar[frozenset[str]] = frozenset()
    # True when ``add`` writes strings that depend only on the sample's prompt, photo index
    # and concept (not on rng or pixels): the DataModule can then list every value its keys
    # take (`PersonalizationDataModule.possible_values`), and losses encode them up front.
    enumerable: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for key in cls.provides:
            if key in _REGISTRY and _REGISTRY[key].__qualname__ != cls.__qualname__:
                raise TypeError(f"Batch key {key!r} is provided by {_REGISTRY[key]} already.")
            _REGISTRY[key] = cls

    @classmethod
    def from_datamodule(cls, datamodule: PersonalizationDataModule) -> SampleExtra:
        """Build from the DataModule's options; raise ValueError naming a missing option."""
        return cls()

    def add(self, sample: dict[str, Any], concept_index: int, rng: random.Random) -> None:
        """Write this extra's keys into one sample (rng: seeded by the sample index)."""
        raise NotImplementedError(f"{type(self).__name__} must implement add().")


def extra_for(key: str) -> type[SampleExtra] | None:
    """The extra class that provides a batch key, if any."""
    return _REGISTRY.get(key)


def known_keys() -> set[str]:
    return set(_REGISTRY)
