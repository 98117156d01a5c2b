"""Reaching the Hugging Face Hub: one quick check instead of a minute of retries when offline."""

from __future__ import annotations

import os
import socket
from functools import lru_cache
from urllib.parse import urlparse


@lru_cache(maxsize=1)
def hub_error(timeout: float = 3.0) -> str | None:
    """None when the hub answers a TCP connect, else why not."""
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return "HF_HUB_OFFLINE=1"
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
    except OSError as err:
        return f"{url.hostname} unreachable ({err})"
    return None


def offline_unless_reachable() -> None:
    """Switch huggingface_hub to its local cache when the hub cannot be reached, so loads fail (or
    succeed from the cache) at once instead of retrying."""
    if hub_error() is not None:
        os.environ["HF_HUB_OFFLINE"] = "1"
        try:
            import huggingface_hub.constants as c

            c.HF_HUB_OFFLINE = True
        except ImportError:
            pass
