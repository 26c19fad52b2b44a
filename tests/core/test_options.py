"""core/options.py: shared overlay options, and the command line's ``null`` in a dataclass."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from core.options import accepts_options_of, clear_null_strings, none_for_null


@dataclass(frozen=True)
class Folders:
    folder: str | None = None
    other: str | None = "kept"

    def __post_init__(self) -> None:
        clear_null_strings(self, "folder")


@pytest.mark.parametrize(
    ("given", "read"), [("None", None), ("null", None), ("x", "x"), (None, None)]
)
def test_null_words_become_none(given: str | None, read: str | None) -> None:
    assert none_for_null(given) == read
    assert Folders(folder=given).folder == read


def test_only_the_named_fields_are_cleared() -> None:
    assert Folders(folder="null", other="null").other == "null"


def test_accepts_options_of_adds_the_missing_keyword_options() -> None:
    class Source:
        def __init__(self, size: int = 3, name: str = "a") -> None: ...

    @accepts_options_of(Source)
    class Target:
        def __init__(self, name: str = "b", **ignored: object) -> None:
            self.ignored = ignored

    import inspect

    params = inspect.signature(Target.__init__).parameters
    assert params["name"].default == "b" and params["size"].default == 3
    assert params["size"].kind is inspect.Parameter.KEYWORD_ONLY
    assert Target(size=5).ignored == {"size": 5}
