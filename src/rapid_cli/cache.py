"""Where rapid keeps what it downloads or converts once: models, wheels, code checks (a leaf: tasks and doctor
read the path without importing model loading)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root(cache_dir: str | None = None) -> Path:
    """`cache_dir` (the config's), else $RAPID_CACHE, else ~/.cache/rapid."""
    root = cache_dir or os.environ.get("RAPID_CACHE") or Path.home() / ".cache" / "rapid"
    return Path(root).expanduser()
