"""Typed configuration: dataclass schemas registered in Hydra's ConfigStore.

`conf/config.yaml` starts its defaults list with `base_config` (the `Config` schema below), so every
YAML in `conf/` and every shell override is merged into these dataclasses: a misspelled key or a
value of the wrong type fails at compose time with the key's name. Checks that involve several fields
(group size, batch shape against the data set) live in `validate`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from rapid_cli.errors import RapidError


class OldLogprobs(str, Enum):  # noqa: UP042 (OmegaConf stores the Enum member; str() stays its qualified name)
    recompute = "recompute"  # trainer model recomputes log pi_old before the first update (authors)
    sampler = "sampler"  # take the sampler's per-token logprobs as they came out of generation
    auto = "auto"  # recompute until the per-round audit shows the sampler's agree within algo.sampler_logw_tol, then sampler


@dataclass
class ModelConfig:
    name: str = MISSING  # preset name, used in run names
    path: str = MISSING  # hub id, local HF directory, a .gguf file, `pkg:<module>/<file>.gguf`, or `tiny`
    dtype: str = "float32"  # float32 | bfloat16 | float16: weights as loaded; `rapid train` needs float32 (mixed precision: train.mixed_precision)
    chat_template: bool = True  # wrap prompts in the tokenizer's chat template when it has one
    gradient_checkpointing: bool = False  # trade compute for activation memory
    trust_remote_code: bool = False  # run the model repo's own Python code (only for repos you trust)
    # Shape of the in-process random model (`path: tiny`); head_dim 64 so vLLM's CPU kernels accept it.
    tiny_layers: int = 2  # tiny model: transformer blocks
    tiny_hidden: int = 128  # tiny model: hidden size (a multiple of tiny_heads)
    tiny_heads: int = 2  # tiny model: attention heads
    tiny_vocab: int = 512  # tiny model: BPE vocabulary size


@dataclass
class TaskConfig:
    name: str = MISSING  # arith | gsm8k | math | mbpp | humaneval
    source: str = "auto"  # auto | hub | offline | local: where the data comes from (auto: local > hub > offline)
    data_path: str | None = None  # local file or directory; overrides the hub and the offline copy
    hub_id: str | None = None  # Hugging Face dataset id
    hub_config: str | None = None  # dataset config name on the hub
    hub_test_id: str | None = None  # a separate hub dataset for the test split (math: MATH-500); null: hub_id
    hub_split: str | None = None  # hub split holding every record, split here with split_seed (mbpp)
    split_seed: int = 42  # shuffles a single-split data set before the train/test cut (mbpp: the authors' 42)
    test_fraction: float = 0.3  # share of a single-split data set kept for testing (mbpp: 378 -> 264 / 114)
    system_prompt: str | None = None  # optional system message
    prompt_template: str = "{question}"  # how a problem becomes the user message
    max_train: int | None = None  # keep only the first N training problems
    max_test: int | None = None  # keep only the first N test problems
    # arith only: synthetic integer arithmetic generated from the seed
    digits: int = 1  # operands have 1..digits digits
    ops: list[str] = field(default_factory=lambda: ["+"])  # any of + - *
    num_train: int = 2000  # problems generated for training
    num_test: int = 200  # problems generated for evaluation


@dataclass
class SamplerConfig:
    name: str = "auto"  # auto (vllm when installed, else hf) | vllm | hf
    temperature: float = 1.0  # sampling temperature of the behaviour policy; logprobs use the same one
    top_p: float = 1.0  # nucleus sampling; 1 keeps the whole distribution
    max_tokens: int = 128  # max completion tokens
    batch_size: int = 64  # sequences generated together (hf)
    # vllm only
    # share of GPU memory for weights + KV cache (on CPU: host RAM for the KV cache); null: on CUDA a KV cache sized
    # for a round's sequences at max_model_len (samplers/vllm.py engine_options), on CPU 0.3
    gpu_memory_utilization: float | None = None
    kv_cache_gb: float | None = None  # fixed KV-cache size in GiB instead (overrides gpu_memory_utilization)
    enforce_eager: bool | None = None  # skip CUDA graphs; null: false on CUDA (graphs: faster decoding), true on CPU
    max_model_len: int | None = 2048  # prompt + completion tokens per sequence; null: the model's maximum
    dtype: str = "auto"  # auto: bfloat16 on CUDA, else model.dtype
    sleep_between_rounds: bool = False  # CUDA only: free the KV cache (only it) during the update, wake before sync


@dataclass
class OptimizerConfig:
    name: str = "adamw"  # the optimizer (AdamW, fused on plain tensors)
    lr: float = 1e-6  # learning rate (the paper's 1e-6)
    weight_decay: float = 0.0  # AdamW decoupled weight decay
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # AdamW moment decay rates
    max_grad_norm: float | None = 1.0  # gradient clipping; null disables it
    warmup_steps: int = 0  # linear warm-up in optimizer steps
    schedule: str = "constant"  # constant | cosine (decay over all optimizer steps of the run)
    max_skipped_steps: int = 3  # steps with a non-finite loss/gradient are skipped; this many in a row stop the run


@dataclass
class AlgoConfig:
    name: str = "rapid"  # loss function, looked up in rapid_cli.algorithms
    steps_per_generation: int = 4  # A: optimizer steps per generation round
    group_size: int = 4  # G: completions per prompt
    prompts_per_step: int = 8  # M: prompt groups per mini-batch (one optimizer step)
    micro_batch_size: int = 8  # sequences per forward/backward; a multiple of G (whole groups)
    iw_clip: float | None = 2.0  # c: importance weights are clipped at c before the baseline
    eps: float | None = 0.2  # PPO ratio clip; null = unclipped importance-weighted PG
    old_logprobs: OldLogprobs = OldLogprobs.auto  # with A=1 (on-policy) nothing is recomputed: ratio = 1
    sampler_logw_tol: float = 1e-2  # auto: largest |sum_t (sampler - trainer)| of a sequence (error in log w) trusted
    # Baselines (conf/algo/grpo|pg|dapo|dr_grpo.yaml); each loss takes only the options it names.
    kl_beta: float = 0.0  # grpo: weight of the k3 KL to the frozen initial policy (0.04); needs a reference copy
    eps_high: float | None = None  # dapo: upper PPO clip ("clip-higher", 0.28); null: eps
    drop_equal_groups: bool = False  # dapo: drop groups whose rewards are all equal
    norm_len: int | None = None  # dr_grpo: constant token count the loss sum is divided by


@dataclass
class TrainConfig:
    rounds: int = 10  # generation rounds
    log_samples: int = 2  # completions printed to the console each round (0: none)
    save_every: int = 10  # checkpoint every N rounds (0: only at the end); always at the end and on Ctrl-C
    keep_checkpoints: int = 2  # newest checkpoints kept in <run dir>/checkpoints (0: all)
    resume: str | None = None  # auto (newest intact checkpoint of this run) | a checkpoint or run directory
    parallel: str = "none"  # none | ddp | fsdp: data parallel over the processes torchrun starts
    # auto (bf16 on CUDA, none on CPU) | none | bf16: fp32 master weights with bf16 autocast (ddp/none) or FSDP2 bf16
    # compute with fp32 reduction
    mixed_precision: str = "auto"
    dist_timeout_s: int = 600  # a collective waiting longer than this (a rank died) ends the job
    # SIGTERM (SLURM, docker stop, Kubernetes): seconds to finish the round and save before abandoning it
    # (the last checkpoint stays). Ctrl-C and SIGUSR1 wait for the round; a second signal abandons it.
    stop_grace_s: float | None = 25.0


@dataclass
class EvalConfig:
    every: int = 0  # evaluate every N rounds (0: only before and after training)
    at_start: bool = True  # evaluate before the first round
    n: int = 1  # samples per problem
    k: list[int] = field(default_factory=lambda: [1])  # pass@k values reported (k <= n)
    temperature: float | None = None  # 0 = greedy; null: greedy when n=1, else 1.0 (pass@k needs samples)
    top_p: float = 1.0  # nucleus sampling for evaluation
    max_tokens: int | None = None  # null: the sampler's max_tokens
    limit: int | None = None  # evaluate on the first N test problems only


@dataclass
class WandbConfig:
    mode: str = "offline"  # offline | online | disabled
    project: str = "rapid"  # W&B project
    entity: str | None = None  # W&B team or user; null: your default
    name: str | None = None  # run name; null: derived from the overrides
    samples_every: int = 5  # log a table of sample completions with rewards every N rounds (0: never)


@dataclass
class RewardConfig:
    sandbox: str = "bwrap"  # bwrap | none: how generated code runs (none = NO isolation; warned)
    timeout_s: float = 3.0  # wall-clock limit per program (the authors': 3 s)
    memory_mb: int = 1024  # address-space limit per program, and memory cgroup limit per run where one can be made
    workers: int | None = None  # programs run in parallel; null: one per CPU core
    sandbox_packages: list[str] = field(default_factory=lambda: ["numpy"])  # importable inside the sandbox
    sandbox_uid: int = 65534  # host uid/gid generated code runs as when rapid runs as root (never 0)
    math_timeout_s: float = 5.0  # limit for one math-verify parse/compare


@dataclass
class LoggerConfig:
    wandb: WandbConfig = field(default_factory=WandbConfig)
    live: bool = True  # rich progress bar and live status line


@dataclass
class Config:
    model: ModelConfig = MISSING
    task: TaskConfig = MISSING
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    seed: int = 0  # seeds data order, sampling and the tiny model's weights
    device: str = "auto"  # auto | cpu | cuda
    cache_dir: str | None = None  # converted models and offline data; null: $RAPID_CACHE or ~/.cache/rapid
    experiment: str | None = None  # name of the experiment preset, if one was chosen


def describe() -> list[tuple[str, str, str]]:
    """(key, default, description) for every key of the schema, from the comments beside the fields above,
    so `rapid train --help` documents what this file documents."""
    import dataclasses
    import inspect
    import re

    def fields(cls, prefix: str):
        comments, above = {}, []
        for line in inspect.getsource(cls).splitlines():
            found = re.match(r"\s+(\w+): [^#]*?(?:#\s*(.*))?$", line)
            if line.strip().startswith("#"):
                above.append(line.strip().lstrip("# "))
            elif found:
                comments[found.group(1)] = found.group(2) or " ".join(above)
                above = []
        for f in dataclasses.fields(cls):
            nested = f.default_factory if f.default_factory is not dataclasses.MISSING else None
            if nested is not None and dataclasses.is_dataclass(nested):
                yield from fields(nested, f"{prefix}{f.name}.")
            elif f.name in ("model", "task") and prefix == "":
                yield from fields(ModelConfig if f.name == "model" else TaskConfig, f"{f.name}.")
            else:
                default = f.default if f.default is not dataclasses.MISSING else (nested() if nested else "???")
                yield f"{prefix}{f.name}", str(getattr(default, "value", default)), comments.get(f.name, "")

    return list(fields(Config, ""))


def register_configs() -> None:
    ConfigStore.instance().store(name="base_config", node=Config)


_CHOICES = {
    "model.dtype": ("float32", "bfloat16", "float16"),
    "task.source": ("auto", "hub", "offline", "local"),
    "optimizer.name": ("adamw",),
    "optimizer.schedule": ("constant", "cosine"),
    "logger.wandb.mode": ("offline", "online", "disabled"),
    "device": ("auto", "cpu", "cuda"),
    "sampler.name": ("auto", "hf", "vllm"),
    "sampler.dtype": ("auto", "float32", "bfloat16", "float16"),
    "reward.sandbox": ("bwrap", "none"),
    "train.parallel": ("none", "ddp", "fsdp"),
    "train.mixed_precision": ("auto", "none", "bf16"),
}


def validate(cfg) -> None:
    """Cross-field checks; raises RapidError with one line naming the key and the fix."""
    from omegaconf import OmegaConf

    for key, allowed in _CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if value not in allowed:
            raise RapidError(f"{key}={value!r} is not one of {', '.join(allowed)}")
    a = cfg.algo
    if a.group_size < 2:
        raise RapidError(
            f"algo.group_size={a.group_size}: group-relative advantages need at least 2 completions per prompt"
        )
    for key in ("steps_per_generation", "prompts_per_step", "micro_batch_size"):
        if getattr(a, key) < 1:
            raise RapidError(f"algo.{key}={getattr(a, key)} must be at least 1")
    if a.micro_batch_size % a.group_size:
        raise RapidError(
            f"algo.micro_batch_size={a.micro_batch_size} must be a multiple of algo.group_size={a.group_size} "
            "(micro-batches hold whole prompt groups)"
        )
    if a.iw_clip is not None and a.iw_clip < 1:
        raise RapidError(f"algo.iw_clip={a.iw_clip} must be >= 1 (or null for no clipping)")
    if a.eps is not None and not 0 < a.eps < 1:
        raise RapidError(f"algo.eps={a.eps} must be in (0, 1) (or null for the unclipped loss)")
    if a.old_logprobs == OldLogprobs.sampler and a.steps_per_generation > 1 and cfg.sampler.top_p < 1:
        from rapid_cli.samplers import resolve_name

        if resolve_name(cfg.sampler.name) == "vllm":
            raise RapidError(f"algo.old_logprobs=sampler with sampler=vllm and sampler.top_p={cfg.sampler.top_p}: vLLM's "
                             "log-probs are then renormalised over the top-p nucleus, not the untruncated log softmax(logits/T) "
                             "the trainer's ratio uses; use algo.old_logprobs=recompute, sampler=hf, or sampler.top_p=1")
    if a.sampler_logw_tol < 0:
        raise RapidError(f"algo.sampler_logw_tol={a.sampler_logw_tol} must be >= 0")
    from rapid_cli.algorithms import LOSSES

    if a.name not in LOSSES:
        raise RapidError(f"algo.name={a.name!r} is unknown; choose one of {', '.join(sorted(LOSSES))}")
    import inspect

    if a.kl_beta and "ref_logprobs" not in inspect.signature(LOSSES[a.name]).parameters:
        raise RapidError(f"algo.kl_beta={a.kl_beta} has no effect with algo.name={a.name}; use algo=grpo, or set it to 0")
    if a.kl_beta < 0:
        raise RapidError("algo.kl_beta must be >= 0")
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
    from rapid_cli.tasks import TASKS

    if cfg.task.name not in TASKS:
        raise RapidError(f"task.name={cfg.task.name!r} is unknown; choose one of {', '.join(sorted(TASKS))}")
    bad_ops = set(cfg.task.ops) - {"+", "-", "*"}
    if bad_ops:
        raise RapidError(f"task.ops has unknown operators {sorted(bad_ops)}; use any of + - *")
    if not 0 < cfg.task.test_fraction < 1:
        raise RapidError(f"task.test_fraction={cfg.task.test_fraction} must be in (0, 1)")
    if cfg.reward.timeout_s <= 0 or cfg.reward.math_timeout_s <= 0:
        raise RapidError("reward.timeout_s and reward.math_timeout_s must be > 0")
    if cfg.task.digits < 1:
        raise RapidError("task.digits must be at least 1")
    # Python slices would quietly turn 0 into "all" and -5 into "all but 5": refuse them.
    for key in ("eval.limit", "task.max_train", "task.max_test", "eval.max_tokens"):
        value = OmegaConf.select(cfg, key)
        if value is not None and value < 1:
            raise RapidError(f"{key}={value} must be at least 1 (or null for no limit)")
    if cfg.task.name == "arith" and cfg.task.data_path:
        raise RapidError("task.data_path has no effect with task=arith (its problems are generated); "
                         "use task=gsm8k for a file of word problems, or drop task.data_path")
    m = cfg.model
    if m.path == "tiny" and (m.tiny_hidden % m.tiny_heads or m.tiny_heads < 1):
        raise RapidError(f"model.tiny_hidden={m.tiny_hidden} must be a multiple of model.tiny_heads={m.tiny_heads}")


def validate_training(cfg) -> None:
    """Checks that only `rapid train` needs (`rapid eval` may load any dtype)."""
    if cfg.model.dtype != "float32":
        # AdamW on bf16/fp16 weights rounds most small updates away (at lr 1e-6 about 2% of the weights
        # change per step, against all of them in fp32): keep fp32 master weights and compute in bf16.
        raise RapidError(f"model.dtype={cfg.model.dtype} would train {cfg.model.dtype} weights, whose small updates round "
                         "away; keep model.dtype=float32 and use train.mixed_precision=bf16 (the default on CUDA) for speed")


def resolve_precision(cfg, cuda: bool) -> tuple[str, str]:
    """(train.mixed_precision, vLLM engine dtype) with `auto` resolved. On CUDA: fp32 master weights, bf16
    autocast and a bf16 engine (fast, and the weights still take every small update); on CPU fp32 throughout."""
    mixed = cfg.train.mixed_precision
    engine = cfg.sampler.dtype
    if mixed == "auto":
        mixed = "bf16" if cuda else "none"
    if engine == "auto":
        engine = "bfloat16" if cuda else cfg.model.dtype
    return mixed, engine


def validate_data(cfg, n_train: int) -> None:
    """Checks that need the loaded data set."""
    need = cfg.algo.steps_per_generation * cfg.algo.prompts_per_step
    if need > n_train:
        raise RapidError(
            f"a round needs algo.steps_per_generation x algo.prompts_per_step = {need} prompts but task "
            f"{cfg.task.name} has only {n_train} training problems; lower one of them"
        )
