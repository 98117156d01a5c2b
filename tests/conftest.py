"""Shared fixtures: compose the real config (as `rapid train` does) and shrink it for CPU tests."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
RAPID = str(Path(sys.executable).parent / "rapid")

# A run small enough for a CPU test: 2 groups of 2 per step, 2 steps per round, short completions.
TINY = [
    "model=tiny",
    "sampler=hf",
    "task=arith",
    "algo.steps_per_generation=2",
    "algo.prompts_per_step=2",
    "algo.group_size=2",
    "algo.micro_batch_size=2",
    "sampler.max_tokens=8",
    "train.rounds=2",
    "train.log_samples=0",
    "eval.limit=4",
    "logger.wandb.mode=disabled",
    "logger.live=false",
]


def compose(overrides: list[str]):
    from rapid_cli.cli import compose_config

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
