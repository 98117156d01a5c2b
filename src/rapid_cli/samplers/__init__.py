"""Samplers generate completions with per-token behaviour log-probs and take weight updates.

Each sampler implements `Sampler`; `make_sampler` picks one by `sampler.name`.
"""

from __future__ import annotations

from typing import Protocol

from rapid_cli.config import RapidError
from rapid_cli.types import Generations, SamplingParams


class Sampler(Protocol):
    def generate(self, prompts: list[list[int]], params: SamplingParams) -> Generations: ...

    def sync_weights(self, model) -> None:
        """Make the next `generate` use `model`'s current weights."""


def make_sampler(cfg, model, tokenizer) -> Sampler:
    if cfg.sampler.name == "hf":
        from rapid_cli.samplers.hf import HFSampler

        return HFSampler(model, tokenizer, batch_size=cfg.sampler.batch_size)
    raise RapidError(f"sampler.name={cfg.sampler.name!r} is unknown; use sampler=hf")
