"""The run's plan: what the composed config means on this machine, resolved once after validation.

Several config keys only mean something together (`train.samples` decides `train.rounds`,
`eval.every_samples` decides `eval.every`, `auto` precision depends on the device, a mini-batch's
groups are split over the ranks). They are resolved here into one frozen `Plan` that the loop and
its parts read; nothing writes derived values back into the config, so the config saved with a
checkpoint is the one the user composed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from rapid_cli.config import Config, resolve_precision
from rapid_cli.hardware import fast_bf16
from rapid_cli.samplers import Sampler, make_sampler, resolve_name
from rapid_cli.types import SamplingParams
from rapid_cli.validation import planned_eval_every, planned_rounds, planned_save_every


@dataclass(frozen=True)
class Plan:
    rounds: int  # train.rounds, or what train.samples buys
    steps: int  # optimizer steps per round (algo.steps_per_generation, A)
    # prompt groups in one mini-batch over every rank (algo.prompts_per_step, M)
    groups_per_step: int
    group_size: int  # completions per prompt (G)
    world: int  # ranks
    # rounds between evaluations (0: only after the last), from eval.every or eval.every_samples
    eval_every: int
    save_every: int  # rounds between checkpoints (0: only the last), from train.save_every or save_every_samples
    keep_checkpoints: int  # newest checkpoints kept (0: all)
    eval_at_start: bool  # evaluate the starting policy as round 0 (a fresh run only)
    log_samples: int  # completions printed to the console each round
    lr: float  # optimizer.lr, x lora.lr_scale when LoRA trains adapters
    precision: str  # train.mixed_precision resolved: none | bf16
    engine_dtype: str  # the vLLM engine's dtype, resolved
    sampler: str  # sampler.name resolved: vllm | hf
    device: str  # cpu | cuda
    seed: int
    sampling: SamplingParams  # a round's sampling, before its seeds

    @property
    def groups_per_rank(self) -> int:
        """Prompt groups of one mini-batch on this rank."""
        return self.groups_per_step // self.world

    @property
    def prompts_per_round(self) -> int:
        return self.steps * self.groups_per_step

    @property
    def total_steps(self) -> int:
        """Optimizer steps in the whole run (the cosine schedule's length)."""
        return self.rounds * self.steps

    @property
    def sequences_per_rank(self) -> int:
        """Completions one rank generates in a round."""
        return self.prompts_per_round * self.group_size // self.world

    def evaluates_after(self, rnd: int) -> bool:
        return bool(self.eval_every and rnd % self.eval_every == 0) or rnd == self.rounds

    def saves_after(self, rnd: int) -> bool:
        return bool(self.save_every and rnd % self.save_every == 0) or rnd == self.rounds

    def round_sampling(self, rnd: int, prompt_indices: list[int]) -> SamplingParams:
        """Round `rnd`'s sampling: a seed for the round, and one per prompt from its index in the
        round, so a prompt's completions do not depend on how the round's prompts are split over the
        ranks."""
        seed = self.seed * 1_000_003 + rnd
        prompt_seeds = [seed * 4099 + i for i in prompt_indices]
        return replace(self.sampling, seed=seed, prompt_seeds=prompt_seeds)

    def trust_settings(self, parallel: str) -> dict:
        """What the sampler's log-probs are audited under: trust earned with other settings does not
        carry over."""
        return {"sampler": self.sampler, "engine_dtype": self.engine_dtype,
                "mixed_precision": self.precision, "parallel": parallel, "world": self.world,
                "device": self.device,
                "temperature": self.sampling.temperature, "top_p": self.sampling.top_p}


def make_plan(cfg: Config, device: torch.device, world: int = 1) -> Plan:
    """`cfg` validated; `device` the one this rank computes on."""
    cuda = device.type == "cuda"
    precision, engine_dtype = resolve_precision(cfg, cuda, fast_bf16(cuda))
    a, s = cfg.algo, cfg.sampler
    sampling = SamplingParams(n=a.group_size, temperature=s.temperature, top_p=s.top_p,
                              max_tokens=s.max_tokens, stop=tuple(cfg.task.stop))
    return Plan(rounds=planned_rounds(cfg), steps=a.steps_per_generation,
                groups_per_step=a.prompts_per_step, group_size=a.group_size, world=world,
                eval_every=planned_eval_every(cfg), save_every=planned_save_every(cfg),
                keep_checkpoints=cfg.train.keep_checkpoints, eval_at_start=cfg.eval.at_start,
                log_samples=cfg.train.log_samples,
                lr=cfg.optimizer.lr * (cfg.lora.lr_scale if cfg.lora.enabled else 1.0), precision=precision,
                engine_dtype=engine_dtype, sampler=resolve_name(s.name), device=device.type,
                seed=cfg.seed, sampling=sampling)


def open_sampler(cfg: Config, model, tokenizer, model_path: str,
                 plan: Plan | None = None) -> Sampler:
    """The plan's sampler over `model` (what `rapid train`, `rapid eval` and the scripts generate
    with); without a plan, the one `cfg` makes on the model's device."""
    plan = plan or make_plan(cfg, next(model.parameters()).device)
    lora = cfg.lora
    return make_sampler(cfg.sampler, plan.sampler, model, tokenizer, model_path,
                        engine_dtype=plan.engine_dtype, seed=cfg.seed,
                        trust_remote_code=cfg.model.trust_remote_code,
                        sequences=plan.sequences_per_rank,
                        lora_rank=lora.r if lora.enabled and lora.sync == "adapter" else None)
