"""Samplers generate completions with per-token behaviour log-probs and take weight updates.

Each sampler implements `Sampler`; `make_sampler` picks one by `sampler.name`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol

from rapid_cli.config import OldLogprobs, SamplerConfig
from rapid_cli.errors import RapidError
from rapid_cli.lora import merged_state
from rapid_cli.types import Generations, SamplingParams

if TYPE_CHECKING:
    import torch

    from rapid_cli.config import AlgoConfig, SamplerConfig


class Sampler(Protocol):
    def generate(self, prompts: list[list[int]], params: SamplingParams) -> Generations: ...

    def sync_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Make the next `generate` use these weights: every parameter and buffer of the policy as
        (Hugging Face name, plain full tensor), e.g. `Learner.full_weights()`. It may be a generator producing
        them one at a time (FSDP2 gathers each as it goes): consume it once, whole."""


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


def check(sampler_cfg: SamplerConfig, algo_cfg: AlgoConfig) -> None:
    """Settings a sampler cannot serve. vLLM renormalises its log-probs over the top-p nucleus, which is not
    the untruncated log softmax(logits/T) the trainer's importance ratio uses; and at top_p < 1 no sampler
    reports the distribution it drew from (mu), which the engine correction needs."""
    if algo_cfg.engine_correction in ("tis", "mis") and sampler_cfg.top_p < 1:
        raise RapidError(f"algo.engine_correction={algo_cfg.engine_correction} needs the sampler's own probabilities "
                         f"(mu), which no sampler reports at sampler.top_p={sampler_cfg.top_p}; use sampler.top_p=1 "
                         "or algo.engine_correction=auto (off where mu is unknown)")
    if algo_cfg.engine_cap <= 1:
        raise RapidError(f"algo.engine_cap={algo_cfg.engine_cap} must be > 1 (at or below 1 it keeps no ratio)")
    off_policy = algo_cfg.steps_per_generation > 1
    if algo_cfg.old_logprobs == OldLogprobs.sampler and off_policy and sampler_cfg.top_p < 1:
        if resolve_name(sampler_cfg.name) == "vllm":
            raise RapidError(f"algo.old_logprobs=sampler with sampler=vllm and sampler.top_p={sampler_cfg.top_p}: "
                             "vLLM's log-probs are then renormalised over the top-p nucleus, not the untruncated log "
                             "softmax(logits/T) the trainer's ratio uses; use algo.old_logprobs=recompute, sampler=hf, "
                             "or sampler.top_p=1")


def make_sampler(sampler_cfg: SamplerConfig, name: str, model, tokenizer, model_path: str, *, engine_dtype: str,
                 seed: int, trust_remote_code: bool, sequences: int, lora_rank: int | None = None) -> Sampler:
    """`name`: resolved (`resolve_name`); `engine_dtype`: resolved (config.resolve_precision); `sequences`:
    completions one rank generates in a round; `lora_rank`: serve the model's LoRA adapter unmerged."""
    if name == "hf":
        from rapid_cli.samplers.hf import HFSampler

        return HFSampler(model, tokenizer, batch_size=sampler_cfg.batch_size)
    if name == "vllm":
        from rapid_cli.samplers.vllm import VLLMSampler

        sampler = VLLMSampler(sampler_cfg, model_path, engine_dtype, seed=seed, trust_remote_code=trust_remote_code,
                              model=model, sequences=sequences, lora_rank=lora_rank)
        # it loaded from disk: the trainer's exact weights (LoRA merged, the engine rounding them once); serving the
        # adapter, the trainer's base first (a 4-bit one dequantized: not the weights on disk), then the adapter
        if lora_rank is not None:
            sampler.load_weights(merged_state(model, keep_float32=True, merge=False))
        sampler.sync_weights(merged_state(model, keep_float32=True))
        return sampler
    raise RapidError(f"sampler.name={name!r} is unknown; use sampler=vllm or sampler=hf")
