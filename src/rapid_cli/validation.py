"""What a composed config may hold beyond its types: checks across fields, against the registries (task
and algorithm names, what a sampler can report) and against the loaded data. The schema (config.py) has
already rejected unknown keys, wrong types and values outside a choice when the config was composed."""

from __future__ import annotations

from typing import TYPE_CHECKING

from omegaconf import OmegaConf

from rapid_cli import algorithms, samplers, tasks
from rapid_cli.errors import RapidError
from rapid_cli.lora import check_bitsandbytes

if TYPE_CHECKING:
    from rapid_cli.config import Config


def validate(cfg: Config) -> None:
    """Cross-field checks; raises RapidError with one line naming the key and the fix."""
    a = cfg.algo
    if a.group_size < 2:
        raise RapidError(
            f"algo.group_size={a.group_size}: group-relative advantages need at least 2 completions per prompt"
        )
    for key in ("steps_per_generation", "prompts_per_step", "micro_batch_size"):
        if getattr(a, key) < 1:
            raise RapidError(f"algo.{key}={getattr(a, key)} must be at least 1")
    if a.micro_batch_tokens is not None and a.micro_batch_tokens < 1:
        raise RapidError(f"algo.micro_batch_tokens={a.micro_batch_tokens} must be at least 1 (null: by rows)")
    if a.micro_batch_size % a.group_size:
        raise RapidError(
            f"algo.micro_batch_size={a.micro_batch_size} must be a multiple of algo.group_size={a.group_size} "
            "(micro-batches hold whole prompt groups)"
        )
    if a.packed_attention == "segments" and not a.packing:
        raise RapidError("algo.packed_attention=segments is the packed rows' attention: it needs algo.packing=true")
    if a.packed_attention == "segments" and cfg.model.gradient_checkpointing:
        raise RapidError("algo.packed_attention=segments cannot run under model.gradient_checkpointing=true (the "
                         "recomputed forward does not see the segments); use algo.packed_attention=auto or dense")
    if a.iw_clip is not None and a.iw_clip < 1:
        raise RapidError(f"algo.iw_clip={a.iw_clip} must be >= 1 (or null for no clipping)")
    if a.eps is not None and not 0 < a.eps < 1:
        raise RapidError(f"algo.eps={a.eps} must be in (0, 1) (or null for the unclipped loss)")
    if a.sampler_logw_tol < 0:
        raise RapidError(f"algo.sampler_logw_tol={a.sampler_logw_tol} must be >= 0")
    if a.kl_beta < 0:
        raise RapidError("algo.kl_beta must be >= 0")
    validate_lora(cfg)
    if cfg.sampler.temperature <= 0:
        raise RapidError("sampler.temperature must be > 0 for training (behaviour logprobs need a distribution)")
    if not 0 < cfg.sampler.top_p <= 1:
        raise RapidError(f"sampler.top_p={cfg.sampler.top_p} must be in (0, 1]")
    if cfg.sampler.gpu_memory_utilization is not None and not 0 < cfg.sampler.gpu_memory_utilization <= 1:
        raise RapidError(f"sampler.gpu_memory_utilization={cfg.sampler.gpu_memory_utilization} must be in (0, 1]")
    if cfg.sampler.max_tokens < 1:
        raise RapidError("sampler.max_tokens must be at least 1")
    if cfg.train.rounds < 0:
        raise RapidError("train.rounds must be >= 0")
    _whole_rounds("train.samples", cfg.train.samples, round_samples(cfg))
    _whole_rounds("eval.every_samples", cfg.eval.every_samples, round_samples(cfg))
    _whole_rounds("train.save_every_samples", cfg.train.save_every_samples, round_samples(cfg))
    if cfg.train.save_every < 0 or cfg.train.keep_checkpoints < 0:
        raise RapidError("train.save_every and train.keep_checkpoints must be >= 0")
    if cfg.optimizer.lr <= 0:
        raise RapidError(f"optimizer.lr={cfg.optimizer.lr} must be > 0")
    if cfg.optimizer.max_skipped_steps < 1:
        raise RapidError(f"optimizer.max_skipped_steps={cfg.optimizer.max_skipped_steps} must be at least 1")
    if len(cfg.optimizer.betas) != 2:
        raise RapidError("optimizer.betas takes two numbers, e.g. optimizer.betas=[0.9,0.999]")
    e = cfg.eval
    if e.n < 1 or any(k < 1 or k > e.n for k in e.k):
        raise RapidError(f"eval.k={list(e.k)} must lie in 1..eval.n={e.n}")
    if e.temperature is not None and e.temperature < 0:
        raise RapidError("eval.temperature must be >= 0 (0 = greedy)")
    bad_ops = set(cfg.task.ops) - {"+", "-", "*"}
    if bad_ops:
        raise RapidError(f"task.ops has unknown operators {sorted(bad_ops)}; use any of + - *")
    if not 0 < cfg.task.test_fraction < 1:
        raise RapidError(f"task.test_fraction={cfg.task.test_fraction} must be in (0, 1)")
    if cfg.reward.timeout_s <= 0 or cfg.reward.math_timeout_s <= 0:
        raise RapidError("reward.timeout_s and reward.math_timeout_s must be > 0")
    if cfg.reward.max_none_rounds is not None and cfg.reward.max_none_rounds < 1:
        raise RapidError(f"reward.max_none_rounds={cfg.reward.max_none_rounds} must be at least 1 (null: never stop)")
    if any(not isinstance(s, str) or not s for s in cfg.task.stop):
        raise RapidError(f"task.stop={list(cfg.task.stop)} holds an empty string, which would end every completion "
                         "at once; give non-empty strings, e.g. task.stop='[\"Question:\"]', or task.stop='[]'")
    if cfg.task.digits < 1:
        raise RapidError("task.digits must be at least 1")
    # Python slices would quietly turn 0 into "all" and -5 into "all but 5": refuse them.
    for key in ("eval.limit", "task.max_train", "task.max_test", "task.max_solution_steps", "eval.max_tokens"):
        value = OmegaConf.select(cfg, key)
        if value is not None and value < 1:
            raise RapidError(f"{key}={value} must be at least 1 (or null for no limit)")
    if cfg.task.max_solution_steps is not None and cfg.task.name != "gsm8k":
        raise RapidError(f"task.max_solution_steps works with task=gsm8k only (task={cfg.task.name} has no "
                         "step-by-step reference solutions); drop it")
    if cfg.task.name == "arith" and cfg.task.data_path:
        raise RapidError("task.data_path has no effect with task=arith (its problems are generated); "
                         "use task=gsm8k for a file of word problems, or drop task.data_path")
    m = cfg.model
    if m.path == "tiny" and (m.tiny_hidden % m.tiny_heads or m.tiny_heads < 1):
        raise RapidError(f"model.tiny_hidden={m.tiny_hidden} must be a multiple of model.tiny_heads={m.tiny_heads}")

    tasks.check(cfg.task)
    algorithms.check(cfg.algo)
    samplers.check(cfg.sampler, cfg.algo)

def round_samples(cfg: Config) -> int:
    """Completions one round takes: A x M x G."""
    a = cfg.algo
    return a.steps_per_generation * a.prompts_per_step * a.group_size


def _whole_rounds(key: str, samples: int | None, per_round: int) -> None:
    """A count of completions set where rounds are meant must be whole rounds."""
    if samples is not None and (samples < 1 or samples % per_round):
        below = max(1, samples // per_round) * per_round
        raise RapidError(f"{key}={samples} must be a positive multiple of the {per_round} completions a round takes "
                         f"(A x M x G); e.g. {key}={below}" + (f" or ={below + per_round}" if below < samples else ""))


def validate_lora(cfg: Config) -> None:
    lo = cfg.lora
    if lo.quantize != "none" and not lo.enabled:
        raise RapidError(f"lora.quantize={lo.quantize} holds the frozen base of LoRA training in 4 bits and needs "
                         "lora=default (lora=qlora sets both)")
    if not lo.enabled:
        return
    if lo.quantize != "none":
        check_bitsandbytes(lo.quantize)
    if lo.r < 1 or lo.alpha <= 0:
        raise RapidError(f"lora.r={lo.r}, lora.alpha={lo.alpha}: the rank must be at least 1 and alpha positive")
    if lo.lr_scale <= 0:
        raise RapidError(f"lora.lr_scale={lo.lr_scale}: the adapters learn at optimizer.lr x lora.lr_scale; give a "
                         "positive factor (1: optimizer.lr as it is)")
    if lo.dropout != 0:
        raise RapidError(f"lora.dropout={lo.dropout}: rapid trains without dropout so that the trained forward is the "
                         "pi_old the sampler drew from; keep lora.dropout=0")
    if cfg.train.parallel == "fsdp":
        raise RapidError("lora=default with train.parallel=fsdp is not supported yet; use train.parallel=ddp (the "
                         "adapters are small: every rank holds them whole) or full fine-tuning")


def planned_rounds(cfg: Config) -> int:
    """train.rounds, or the rounds train.samples buys (validated to divide)."""
    return cfg.train.rounds if cfg.train.samples is None else cfg.train.samples // round_samples(cfg)


def planned_eval_every(cfg: Config) -> int:
    """eval.every, or the rounds between evaluations eval.every_samples means (validated to divide)."""
    return _rounds_between(cfg.eval.every, cfg.eval.every_samples, cfg)


def planned_save_every(cfg: Config) -> int:
    """train.save_every, or the rounds between checkpoints train.save_every_samples means."""
    return _rounds_between(cfg.train.save_every, cfg.train.save_every_samples, cfg)


def _rounds_between(rounds: int, samples: int | None, cfg: Config) -> int:
    return rounds if samples is None else samples // round_samples(cfg)


def validate_training(cfg: Config) -> None:
    """Checks that only `rapid train` needs (`rapid eval` may load any dtype)."""
    if cfg.lora.enabled and cfg.model.dtype == "bfloat16":
        return  # the base takes no updates, so bf16 loses none; the adapters that do stay float32 (lora.py)
    if cfg.lora.enabled and cfg.model.dtype == "float16":
        raise RapidError("model.dtype=float16 with LoRA: gradients through float16 activations under- and overflow "
                         "without loss scaling, which rapid does not do; use model.dtype=bfloat16 or float32")
    if cfg.model.dtype != "float32":
        # AdamW on bf16/fp16 weights rounds most small updates away (at lr 1e-6 about 2% of the weights
        # change per step, against all of them in fp32): keep fp32 master weights and compute in bf16.
        raise RapidError(f"model.dtype={cfg.model.dtype} would train {cfg.model.dtype} weights, whose small updates "
                         "round away; keep model.dtype=float32 and use train.mixed_precision=bf16 "
                         "(the default on CUDA) for speed, or train LoRA adapters on a bf16 base (lora=default)")


def validate_data(cfg: Config, n_train: int) -> None:
    """Checks that need the loaded data set."""
    need = cfg.algo.steps_per_generation * cfg.algo.prompts_per_step
    if need > n_train:
        raise RapidError(
            f"a round needs algo.steps_per_generation x algo.prompts_per_step = {need} prompts but task "
            f"{cfg.task.name} has only {n_train} training problems; lower one of them"
        )
