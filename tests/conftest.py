"""Shared fixtures: compose the real config (as `rapid train` does) and shrink it for CPU tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
RAPID = str(Path(sys.executable).parent / "rapid")

# A run small enough for a CPU test: the `debug=smoke` preset users have too (conf/debug/smoke.yaml) with
# A=2 for speed (tests that drop it get their algorithm preset's A), without the live progress bar.
TINY = ["debug=smoke", "algo.steps_per_generation=2", "logger.live=false"]


def rapid(*args, cwd=REPO, timeout=600, **env) -> subprocess.CompletedProcess:
    """`rapid <args>` as a user runs it, output captured; W&B off unless `WANDB_MODE=...` is passed
    (`NAME=None` leaves a variable unset)."""
    env = {k: v for k, v in {**os.environ, "WANDB_MODE": "disabled", **env}.items() if v is not None}
    return subprocess.run([RAPID, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def compose(overrides: list[str]):
    from rapid_cli.config import compose_config

    return compose_config(overrides)


@pytest.fixture
def tiny_cfg():
    return compose(TINY)


@pytest.fixture(scope="session")
def tiny_policy():
    """(model, tokenizer) of the in-process tiny model, shared read-only across tests."""
    from rapid_cli.policy import load_policy

    cfg = compose(TINY)
    model, tok, _ = load_policy(cfg.model, __import__("torch").device("cpu"))
    return model, tok


@pytest.fixture(scope="session")
def hub_home(tmp_path_factory):
    """An HF_HOME holding tiny stand-ins under the real repo ids of every preset (tests/hubcache.py)."""
    from hubcache import build

    return build(tmp_path_factory.mktemp("hf-home"))


def offline_hub_env(hub_home) -> dict:
    """The environment of a user whose hub cache holds the presets, with the hub unreachable."""
    return {**os.environ, "HF_HOME": str(hub_home), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}


def pytest_collection_modifyitems(config, items):
    """`@pytest.mark.gpu` tests need a CUDA device torch can use; elsewhere they are skipped, not failed.
    `@pytest.mark.network` tests (package resolution against PyPI, minutes) run only with RAPID_NETWORK_TESTS=1."""
    import torch

    skips = {}
    if not torch.cuda.is_available():
        skips["gpu"] = pytest.mark.skip(reason="needs a CUDA GPU (docs/gpu.md)")
    if os.environ.get("RAPID_NETWORK_TESTS") != "1":
        skips["network"] = pytest.mark.skip(reason="needs PyPI: RAPID_NETWORK_TESTS=1 (make test-install)")
    for item in items:
        for marker, skip in skips.items():
            if item.get_closest_marker(marker):
                item.add_marker(skip)


def stopped_at(tok, ids: list[int], stops: list[str]) -> tuple[list[int], str] | None:
    """Where a completion `ids` stops at the first of `stops` to appear in its text (lm-eval's `until`, vLLM's
    `stop`): its tokens up to the one that completes the string, its text up to where the string starts; None if
    no string appears."""
    for n in range(1, len(ids) + 1):
        text = tok.decode(ids[:n], skip_special_tokens=True)
        found = [text.find(s) for s in stops if s in text]
        if found:
            return ids[:n], text[: min(found)]
    return None
