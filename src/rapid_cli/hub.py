"""Reaching the Hugging Face Hub (and other services): one quick check instead of a minute of retries when offline."""

from __future__ import annotations

import os
import socket
from functools import lru_cache
from urllib.parse import urlparse


@lru_cache(maxsize=4)
def unreachable(url: str, timeout: float = 3.0) -> str | None:
    """None when `url`'s host answers a TCP connect, else why not."""
    parsed = urlparse(url)
    try:
        socket.create_connection((parsed.hostname, parsed.port or 443), timeout=timeout).close()
    except OSError as err:
        return f"{parsed.hostname} unreachable ({err})"
    return None


def hub_error() -> str | None:
    """None when the Hugging Face Hub can be reached, else why not."""
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return "HF_HUB_OFFLINE=1"
    return unreachable(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))


def offline_unless_reachable() -> str | None:
    """Switch huggingface_hub to its local cache when the hub cannot be reached, so loads fail (or
    succeed from the cache) at once instead of retrying. Returns why it is offline, or None."""
    why = hub_error()
    if why is not None:
        os.environ["HF_HUB_OFFLINE"] = "1"
        try:
            import huggingface_hub.constants as c

            c.HF_HUB_OFFLINE = True
        except ImportError:
            pass
    return why
