"""Hub ids without the hub: the local cache's copy, or one clear error in about a second.

``from_pretrained`` on a hub id with no network retries its requests for minutes before it
fails. Before loading, a hub id is checked: if the hub cannot be reached (``HF_HUB_OFFLINE``,
or a connection to the endpoint fails within ``PROBE_TIMEOUT_S``), it becomes the folder of
its cached snapshot, which loads without any request, or a `HubUnavailableError` that says what
to pass instead. With the hub reachable, the id is returned unchanged (downloads work).
"""

from __future__ import annotations

import functools
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

PROBE_TIMEOUT_S = 1.5
_PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


class HubUnavailableError(FileNotFoundError):
    """A hub id that is neither reachable nor in the local cache."""


def looks_like_path(name: str) -> bool:
    """Hub ids are ``owner/name``; anything else with a separator or a dot prefix is a path."""
    return (
        name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep != "/" and os.sep in name
    )


def offline_by_setting() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) says not to try the network."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("TRANSFORMERS_OFFLINE", "") in (
        "1",
        "true",
        "TRUE",
    )


@functools.cache
def hub_reachable() -> bool:
    """A TCP connection to the hub endpoint opens within PROBE_TIMEOUT_S (a proxy: assumed)."""
    if offline_by_setting():
        return False
    if any(os.environ.get(name) for name in _PROXY_VARIABLES):
        return True  # the connection goes through the proxy; let the library find out
    from huggingface_hub import constants

    endpoint = urlparse(constants.ENDPOINT)
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((endpoint.hostname or "", port), timeout=PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


def cached_snapshot(repo_id: str, revision: str | None = None) -> str | None:
    """The local folder of the cached snapshot of ``repo_id``, or None if nothing is cached."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return str(snapshot_download(repo_id, revision=revision, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, ValueError):
        return None


def resolve_hub_id(
    repo_id: str, option: str, alternatives: str, revision: str | None = None
) -> str:
    """``repo_id`` when the hub is reachable; else its cached folder; else the error.

    Args:
        repo_id: an ``owner/name`` hub id (not a path, not a tiny-* name).
        option: the config option that names it, for the message.
        alternatives: what else the option takes, e.g. "'tiny-sd' for the tiny pipeline".
        revision: a branch, tag or commit of the repository.
    """
    if hub_reachable():
        return repo_id
    snapshot = cached_snapshot(repo_id, revision)
    if snapshot is not None:
        return snapshot
    from huggingface_hub import constants

    why = "HF_HUB_OFFLINE is set" if offline_by_setting() else "the hub cannot be reached"
    raise HubUnavailableError(
        f"{repo_id!r} is not in the local Hugging Face cache ({constants.HF_HUB_CACHE}) and "
        f"{why}; set {option} to a local folder (a saved or downloaded copy), or {alternatives}."
    )


def resolve_folder_or_hub_id(
    name_or_path: str, option: str, alternatives: str, revision: str | None = None
) -> str:
    """A local folder as given; a hub id through `resolve_hub_id`."""
    if looks_like_path(name_or_path) or Path(name_or_path).expanduser().exists():
        return name_or_path
    return resolve_hub_id(name_or_path, option, alternatives, revision)
