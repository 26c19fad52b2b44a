"""PERSONALIZE_NUM_THREADS sets torch's thread count; a bad value is a clear error."""

from __future__ import annotations

import pytest
import torch

from core.threads import THREADS_VARIABLE, configure_torch_threads


def test_the_variable_sets_torchs_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv(THREADS_VARIABLE, "1")
        assert configure_torch_threads() == 1 and torch.get_num_threads() == 1
        monkeypatch.delenv(THREADS_VARIABLE)
        assert configure_torch_threads() is None and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("value", ["0", "two", "-1"])
def test_a_bad_value_names_the_variable(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(THREADS_VARIABLE, value)
    with pytest.raises(ValueError, match=f"{THREADS_VARIABLE} must be a positive integer"):
        configure_torch_threads()


def test_a_tiny_cpu_run_uses_one_thread_unless_told(monkeypatch: pytest.MonkeyPatch) -> None:
    before = torch.get_num_threads()
    try:
        monkeypatch.delenv(THREADS_VARIABLE, raising=False)
        torch.set_num_threads(2)
        assert configure_torch_threads(tiny_cpu_run=True) == 1 and torch.get_num_threads() == 1
        monkeypatch.setenv(THREADS_VARIABLE, "2")
        assert configure_torch_threads(tiny_cpu_run=True) == 2 and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
