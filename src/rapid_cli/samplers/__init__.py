"""Samplers generate completions with per-token behaviour log-probs and take weight updates.

Each sampler implements `Sampler`; `make_sampler` picks one by `sampler.name`.
"""

from __future__ import annotations

import os
from typing import Protocol

from rapid_cli.config import resolve_precision
from rapid_cli.errors import RapidError
from rapid_cli.types import Generations, SamplingParams


class Sampler(Protocol):
    def generate(self, prompts: list[list[int]], params: SamplingParams) -> Generations: ...

    def sync_weights(self, model) -> None:
        """Make the next `generate` use `model`'s current weights."""


    def release_memory(self) -> None:
        """Called once generation for the round is done; a sampler may free memory until the next sync."""

    def close(self) -> None:
        """The job is over (or failed): free everything, since the next job may run in this process."""


def resolve_name(name: str) -> str:
    """`auto` means vLLM where it is installed, else transformers."""
    if name != "auto":
        return name
    from rapid_cli.samplers.vllm import vllm_available

    return "vllm" if vllm_available() else "hf"


def make_sampler(cfg, model, tokenizer, model_path: str) -> Sampler:
    name = resolve_name(cfg.sampler.name)
    if name == "hf":
        from rapid_cli.samplers.hf import HFSampler

        return HFSampler(model, tokenizer, batch_size=cfg.sampler.batch_size)
    if name == "vllm":
        from rapid_cli.samplers.vllm import VLLMSampler

        _, dtype = resolve_precision(cfg, next(model.parameters()).is_cuda)
        a = cfg.algo
        world = int(os.environ.get("WORLD_SIZE", "1"))
        sampler = VLLMSampler(cfg.sampler, model_path, dtype, seed=cfg.seed, trust_remote_code=cfg.model.trust_remote_code,
                              model=model, sequences=a.steps_per_generation * a.prompts_per_step * a.group_size // world)
        sampler.sync_weights(model)  # the engine loaded from disk; make sure it holds the trainer's exact weights
        return sampler
    raise RapidError(f"sampler.name={cfg.sampler.name!r} is unknown; use sampler=vllm or sampler=hf")
