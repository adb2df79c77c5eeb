"""Whether the Hugging Face hub can be reached, asked once per process: on a machine without internet a model's
download then fails at once with the offline advice, instead of after a minute of huggingface_hub's retries.

A cached download (``~/.cache/huggingface``) is used without asking the hub when the hub cannot be reached.
Tested in ``tests/task/test_hub.py``.
"""

from __future__ import annotations

import functools
import os
import socket
from urllib.parse import urlparse

# Long enough for a slow link to answer; a machine without a route or a name server answers at once.
CONNECT_TIMEOUT_S = 3.0
_PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "HTTP_PROXY", "http_proxy")


@functools.cache
def hub_unreachable() -> str | None:
    """Why the hub cannot be reached (one line), or None when it answers or the question cannot be asked here.

    ``HF_HUB_OFFLINE=1`` counts as unreachable. Behind a proxy the hub is not asked (only the proxy could say).
    """
    from huggingface_hub import constants

    if constants.is_offline_mode():
        return "HF_HUB_OFFLINE is set"
    if any(os.environ.get(v) for v in _PROXY_VARIABLES):
        return None
    endpoint = urlparse(constants.ENDPOINT)
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        return f"{host}:{port} does not answer ({e})"
    return None


def cached_file(repo_id: str, filename: str = "model.safetensors") -> str | None:
    """The path of ``filename`` of ``repo_id`` in the local Hugging Face cache, or None if it was never downloaded."""
    from huggingface_hub import try_to_load_from_cache

    path = try_to_load_from_cache(repo_id, filename)
    return path if isinstance(path, str) else None
