"""Hub ids without network: the cached snapshot, or one clear error within about a second."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from huggingface_hub import constants

from pretrained import hub
from pretrained.hub import HubUnavailableError, resolve_hub_id
from pretrained.resolve import resolve_pretrained

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture()
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty Hugging Face cache of this test's own; the reachability probe forgotten."""
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    probe = hub.hub_reachable  # a test may replace it
    probe.cache_clear()
    yield tmp_path / "hub"
    probe.cache_clear()


def cache_snapshot(cache: Path, repo_id: str) -> Path:
    """The layout huggingface_hub writes: refs/main -> snapshots/<commit>/..."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    snapshot = repo / "snapshots" / COMMIT
    (snapshot / "unet").mkdir(parents=True)
    (snapshot / "unet" / "config.json").write_text("{}")
    return snapshot


def test_offline_a_cached_hub_id_becomes_its_snapshot_folder(hub_cache: Path) -> None:
    snapshot = cache_snapshot(hub_cache, "owner/model")
    assert Path(resolve_hub_id("owner/model", "opt", "x")) == snapshot
    assert Path(resolve_pretrained("owner/model")) == snapshot


def test_offline_an_uncached_hub_id_is_one_clear_error(hub_cache: Path) -> None:
    with pytest.raises(HubUnavailableError) as caught:
        resolve_pretrained("owner/missing", "model.init_args.pretrained_model_name_or_path")
    message = str(caught.value)
    assert "'owner/missing' is not in the local Hugging Face cache" in message
    assert "HF_HUB_OFFLINE is set" in message and "'tiny-sd'" in message
    assert "set model.init_args.pretrained_model_name_or_path to a local folder" in message


def test_an_unreachable_hub_fails_fast_without_the_offline_setting(
    hub_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    for proxy in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    start = time.monotonic()
    with pytest.raises(HubUnavailableError, match="the hub cannot be reached"):
        resolve_hub_id("owner/missing", "opt", "x")
    assert time.monotonic() - start < hub.PROBE_TIMEOUT_S + 1.0


def test_folders_and_tiny_names_never_ask_the_hub(
    hub_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_probe() -> bool:
        raise AssertionError("the hub was probed")

    monkeypatch.setattr(hub, "hub_reachable", no_probe)
    folder = tmp_path / "model"
    folder.mkdir()
    assert resolve_pretrained(str(folder)) == str(folder)
    assert resolve_pretrained("./relative/folder") == "./relative/folder"
