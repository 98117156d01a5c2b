"""Typed configuration: dataclass schemas registered in Hydra's ConfigStore.

`conf/config.yaml` starts its defaults list with `base_config` (the `Config` schema below), so every
YAML in `conf/` and every shell override is merged into these dataclasses: a misspelled key or a
value of the wrong type fails at compose time with the key's name. Checks that involve several fields
(group size, batch shape against the data set) live in `validate`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from rapid_cli.errors import RapidError

# Choices are StrEnums: a value outside them fails when the config is composed, naming the key and the
# options, and a member compares equal to (and prints as) its plain string.


class EngineCorrection(StrEnum):
    none = "none"
    tis = "tis"  # per token min(pi_old / mu, algo.engine_cap) on each token's loss term
    mis = "mis"  # per sequence: dropped unless pi_old / mu lies in [1 / algo.engine_cap, algo.engine_cap]
    # tis where the engine reports mu and its log-probs are not the trainer's: the last audit's gap is above
    # algo.sampler_logw_tol, or, before any audit, engine or trainer computes in 16 bits
    auto = "auto"


class PackedAttention(StrEnum):
    # segments, except under model.gradient_checkpointing (whose recomputed forward would not see the plan): dense
    auto = "auto"
    dense = "dense"  # one attention call per layer over every (query, key) pair of a row, the mask hiding most
    segments = "segments"  # only the pairs the mask keeps: each prompt once, its completions a chunk at a time


class OldLogprobs(StrEnum):
    recompute = "recompute"  # trainer model recomputes log pi_old before the first update (authors)
    sampler = "sampler"  # take the sampler's per-token logprobs as they came out of generation
    # recompute until the per-round audit shows the sampler's agree within algo.sampler_logw_tol, then sampler
    auto = "auto"


class Dtype(StrEnum):
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


class EngineDtype(StrEnum):
    auto = "auto"
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


class DataSource(StrEnum):
    auto = "auto"
    hub = "hub"
    offline = "offline"
    local = "local"


class SamplerName(StrEnum):
    auto = "auto"
    vllm = "vllm"
    hf = "hf"


class OptimizerName(StrEnum):
    adamw = "adamw"


class Schedule(StrEnum):
    constant = "constant"
    cosine = "cosine"


class Parallel(StrEnum):
    none = "none"
    ddp = "ddp"
    fsdp = "fsdp"


class MixedPrecision(StrEnum):
    auto = "auto"
    none = "none"
    bf16 = "bf16"


class WandbMode(StrEnum):
    offline = "offline"
    online = "online"
    disabled = "disabled"


class EvalSplit(StrEnum):
    test = "test"
    train = "train"


class Sandbox(StrEnum):
    bwrap = "bwrap"
    none = "none"


class RewardPool(StrEnum):
    none = "none"
    thread = "thread"
    process = "process"


class Device(StrEnum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class LoraQuantize(StrEnum):
    none = "none"  # the frozen base in model.dtype
    nf4 = "nf4"  # QLoRA: the base's linear layers in 4-bit NormalFloat (bitsandbytes), about 0.52 bytes a weight


class LoraSync(StrEnum):
    merged = "merged"  # the engine gets base + scaled BA as full weights after every round
    adapter = "adapter"  # the engine serves the base weights and the trainer's unmerged adapter (vLLM's LoRA)


@dataclass
class ModelConfig:
    name: str = MISSING  # preset name, used in run names
    path: str = MISSING  # hub id, local HF directory, a .gguf file, `pkg:<module>/<file>.gguf`, or `tiny`
    # float32 | bfloat16 | float16: weights as loaded; `rapid train` needs float32
    # (mixed precision: train.mixed_precision)
    dtype: Dtype = Dtype.float32
    chat_template: bool = True  # wrap prompts in the tokenizer's chat template when it has one
    gradient_checkpointing: bool = False  # trade compute for activation memory
    trust_remote_code: bool = False  # run the model repo's own Python code (only for repos you trust)
    # Shape of the in-process random model (`path: tiny`); head_dim 64 so vLLM's CPU kernels accept it.
    tiny_layers: int = 2  # tiny model: transformer blocks
    tiny_hidden: int = 128  # tiny model: hidden size (a multiple of tiny_heads)
    tiny_heads: int = 2  # tiny model: attention heads
    tiny_vocab: int = 512  # tiny model: BPE vocabulary size


@dataclass
class LoraConfig:
    """Low-rank adapters (peft's LoRA) on the decoder's linear layers instead of full fine-tuning: `lora=default`.
    The base weights stay frozen and the optimizer holds only the adapters."""

    enabled: bool = False  # lora=default turns it on
    r: int = 32  # rank of each adapter (verl recommends at least 32 for 0.5B models)
    alpha: float = 64.0  # scale alpha / r on B @ A
    # peft's `all-linear`: every linear layer of the decoder (attention and MLP projections), not the LM head
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])
    dropout: float = 0.0  # must stay 0: dropout would make the trained forward differ from the sampler's pi_old
    sync: LoraSync = LoraSync.merged
    # the adapters learn at optimizer.lr x lr_scale, so a preset's full fine-tuning rate carries over: LoRA's best
    # rate is about 10x full fine-tuning's (Schulman et al. 2025, "LoRA Without Regret"; the demo learns at 1e-4)
    lr_scale: float = 10.0
    # nf4 (lora=qlora): hold the frozen base's linear layers in 4 bits; the engine gets them dequantized, so it
    # samples from the very policy the trainer computes with
    quantize: LoraQuantize = LoraQuantize.none


@dataclass
class TaskConfig:
    name: str = MISSING  # arith | gsm8k | math | mbpp | humaneval | custom (your data: conf/task/custom.yaml)
    # auto | hub | offline | local: where the data comes from (auto: local > hub > offline)
    source: DataSource = DataSource.auto
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
    # gsm8k only: keep the problems whose reference solution takes at most N steps (its lines before "####"), in
    # both splits; null: all. The easier problems, for a model that rarely solves the rest (docs/results.md)
    max_solution_steps: int | None = None
    # generation (training and eval) also ends at the first of these strings, its text cut before it, as lm-eval's
    # `until` does (its GSM8K: ["Question:"], where a few-shot prompt invites the model to write the next question)
    stop: list[str] = field(default_factory=list)
    pass_threshold: float = 1.0  # eval: a sample counts as correct (pass@k) when its total reward is at least this
    # leave out problems whose prompt (chat template included) is longer than this many tokens, with a count; null: keep
    # all (a prompt that cannot fit the model's context then stops the run, naming its file and row)
    max_prompt_tokens: int | None = None
    # custom only: your data set (docs/tasks.md, "Your own task")
    # custom: a separate test file or save_to_disk directory; null: cut from the training data
    test_path: str | None = None
    hub_test_split: str | None = None  # custom: hub split used for testing; null: cut from task.hub_split
    prompt_field: str = "prompt"  # custom: the column holding the prompt ({prompt} in task.prompt_template)
    answer_field: str = "answer"  # custom: the column the reward functions get as `answer`
    messages_field: str = "messages"  # custom: a column of chat messages used as the prompt as is, when a row has it
    # arith only: synthetic integer arithmetic generated from the seed
    digits: int = 1  # operands have 1..digits digits
    ops: list[str] = field(default_factory=lambda: ["+"])  # any of + - *
    num_train: int = 2000  # problems generated for training
    num_test: int = 200  # problems generated for evaluation


@dataclass
class SamplerConfig:
    name: SamplerName = SamplerName.auto  # auto (vllm when installed, else hf) | vllm | hf
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
    dtype: EngineDtype = EngineDtype.auto  # auto: bfloat16 where the device has fast bf16 (hardware.py), else fp32
    sleep_between_rounds: bool = False  # CUDA only: free the KV cache (only it) during the update, wake before sync


@dataclass
class OptimizerConfig:
    name: OptimizerName = OptimizerName.adamw  # the optimizer (AdamW, fused on plain tensors)
    lr: float = 1e-6  # learning rate (the paper's 1e-6)
    weight_decay: float = 0.0  # AdamW decoupled weight decay
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # AdamW moment decay rates
    max_grad_norm: float | None = 1.0  # gradient clipping; null disables it
    warmup_steps: int = 0  # linear warm-up in optimizer steps
    schedule: Schedule = Schedule.constant  # constant | cosine (decay over all optimizer steps of the run)
    max_skipped_steps: int = 3  # steps with a non-finite loss/gradient are skipped; this many in a row stop the run


@dataclass
class AlgoConfig:
    name: str = "rapid"  # loss function, looked up in rapid_cli.algorithms
    steps_per_generation: int = 4  # A: optimizer steps per generation round
    group_size: int = 4  # G: completions per prompt
    prompts_per_step: int = 8  # M: prompt groups per mini-batch (one optimizer step)
    micro_batch_size: int = 8  # sequences per forward/backward; a multiple of G (whole groups)
    # tokens per forward/backward instead (padding included): as many whole groups as fit, so short completions
    # share a pass and long ones do not exhaust memory; micro_batch_size is then not used. null: rows
    micro_batch_tokens: int | None = None
    # the update's forward passes: each group's prompt encoded once and its G completions packed without
    # padding, the LM head applied to completion tokens only, a chunk at a time (false: padded rows)
    packing: bool = True
    # the packed rows' attention: auto | dense | segments (PackedAttention; README "Packed attention")
    packed_attention: PackedAttention = PackedAttention.auto
    # leave out of every forward/backward the prompt groups whose gradient is exactly zero (each algorithm's
    # rule, README "Skipping groups that cannot move the weights"); the step's gradient is unchanged
    skip_zero_advantage: bool = True
    iw_clip: float | None = 2.0  # c: importance weights are clipped at c before the baseline
    eps: float | None = 0.2  # PPO ratio clip; null = unclipped importance-weighted PG
    old_logprobs: OldLogprobs = OldLogprobs.auto  # with A=1 (on-policy) nothing is recomputed: ratio = 1
    sampler_logw_tol: float = 1e-2  # auto: largest |sum_t (sampler - trainer)| of a sequence (error in log w) trusted
    # the samples are the engine's (mu), the losses assume pi_old's: correct for the gap (algorithms/engine.py)
    engine_correction: EngineCorrection = EngineCorrection.auto
    engine_cap: float = 2.0  # C: tis truncates pi_old / mu at C; mis keeps sequences whose ratio is in [1/C, C]
    # Baselines (conf/algo/grpo|pg|dapo|dr_grpo.yaml); each loss takes only the options it names.
    kl_beta: float = 0.0  # grpo: weight of the k3 KL to the frozen initial policy (0.04); needs a reference copy
    eps_high: float | None = None  # dapo: upper PPO clip ("clip-higher", 0.28); null: eps
    drop_equal_groups: bool = False  # dapo: drop groups whose rewards are all equal
    norm_len: int | None = None  # dr_grpo: constant token count the loss sum is divided by


@dataclass
class TrainConfig:
    rounds: int = 10  # generation rounds
    # completions to train on in all, instead of train.rounds: rounds = samples / (A x M x G), so runs with
    # different A (or baselines with A = 1) see the same budget. null: train.rounds
    samples: int | None = None
    log_samples: int = 2  # completions printed to the console each round (0: none)
    save_every: int = 10  # checkpoint every N rounds (0: only at the end); always at the end and on Ctrl-C
    # checkpoint every N training completions instead (whole rounds): contenders with different A save as often
    save_every_samples: int | None = None
    keep_checkpoints: int = 2  # newest checkpoints kept in <run dir>/checkpoints (0: all)
    resume: str | None = None  # auto (newest intact checkpoint of this run) | a checkpoint or run directory
    parallel: Parallel = Parallel.none  # none | ddp | fsdp: data parallel over the processes torchrun starts
    # auto (bf16 where the device has fast bf16: CUDA compute capability >= 8, CPUs with AMX-BF16 or AVX512-BF16;
    # else none) | none | bf16: fp32 master weights with bf16 autocast (ddp/none) or FSDP2 bf16 compute with fp32
    # reduction
    mixed_precision: MixedPrecision = MixedPrecision.auto
    dist_timeout_s: int = 600  # a collective waiting longer than this (a rank died) ends the job
    # SIGTERM (SLURM, docker stop, Kubernetes): seconds to finish the round and save before abandoning it
    # (the last checkpoint stays). Ctrl-C and SIGUSR1 wait for the round; a second signal abandons it.
    stop_grace_s: float | None = 25.0


@dataclass
class EvalConfig:
    every: int = 0  # evaluate every N rounds (0: only before and after training)
    # evaluate every N training completions instead (whole rounds): runs with different A evaluate at the same budgets
    every_samples: int | None = None
    at_start: bool = True  # evaluate before the first round
    n: int = 1  # samples per problem
    k: list[int] = field(default_factory=lambda: [1])  # pass@k values reported (k <= n)
    temperature: float | None = None  # 0 = greedy; null: greedy when n=1, else 1.0 (pass@k needs samples)
    top_p: float = 1.0  # nucleus sampling for evaluation
    max_tokens: int | None = None  # null: the sampler's max_tokens
    limit: int | None = None  # evaluate on the first N problems of the split only
    # test | train: `rapid eval eval.split=train` measures a model on the problems RL would train on (no correct
    # sample there means no group with a learning signal: docs/results.md)
    split: EvalSplit = EvalSplit.test
    # during training: every evaluation's completions, with their rewards, in evals/round-NNNNNN.jsonl.gz of the run
    # directory (what the model got right, read rather than counted; ~0.2 MB each on 800 GSM8K completions)
    save_samples: bool = True


@dataclass
class WandbConfig:
    mode: WandbMode = WandbMode.offline  # offline | online | disabled
    project: str = "rapid"  # W&B project
    entity: str | None = None  # W&B team or user; null: your default
    name: str | None = None  # run name; null: derived from the overrides
    samples_every: int = 5  # log a table of sample completions with rewards every N rounds (0: never)


@dataclass
class RewardConfig:
    sandbox: Sandbox = Sandbox.bwrap  # bwrap | none: how generated code runs (none = NO isolation; warned)
    timeout_s: float = 3.0  # wall-clock limit per program (the authors': 3 s)
    memory_mb: int = 1024  # address-space limit per program, and memory cgroup limit per run where one can be made
    workers: int | None = None  # programs run in parallel; null: one per CPU core
    sandbox_packages: list[str] = field(default_factory=lambda: ["numpy"])  # importable inside the sandbox
    sandbox_uid: int = 65534  # host uid/gid generated code runs as when rapid runs as root (never 0)
    math_timeout_s: float = 5.0  # limit for one math-verify parse/compare
    # task=custom: [{_target_: module.fn, weight: 1.0, name: ..., timeout_s: ..., <args>}, ...]; total = weighted sum
    functions: list[Any] = field(default_factory=list)
    function_timeout_s: float | None = None  # default time limit of one reward function call on a batch (null: none)
    # none | thread | process: run the reward functions (and chunks of rows) in parallel
    pool: RewardPool = RewardPool.none
    pool_workers: int | None = None  # pool size; null: one per CPU core
    # task=custom: a reward function that returns None (not applicable) for every completion of a training round is
    # warned about once; this many such rounds in a row stop the run (null: never)
    max_none_rounds: int | None = 3


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
    lora: LoraConfig = field(default_factory=LoraConfig)
    seed: int = 0  # seeds data order, sampling and the tiny model's weights
    device: Device = Device.auto  # auto | cpu | cuda
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


def job_dirname(overrides: str, limit: int = 120) -> str:
    """A sweep job's directory name from its overrides: a path's '/' becomes '_' (it would nest directories),
    and the name is cut to `limit` characters (a file name may hold 255 bytes; a sweep over many keys writes
    more); either change adds a hash of the whole, so two override lists never share a name. The same
    overrides always give the same name, so train.resume=auto finds the job again.

    >>> job_dirname("algo=grpo,seed=0")
    'algo=grpo,seed=0'
    >>> name = job_dirname("x" * 300); len(name), name[:3], name == job_dirname("x" * 300)
    (129, 'xxx', True)
    >>> job_dirname("task.data_path=/data/mbpp.jsonl")
    'task.data_path=_data_mbpp.jsonl-e85a13b2'
    """
    name = overrides.replace("/", "_")[:limit]
    if name == overrides:
        return name
    import hashlib

    return f"{name}-{hashlib.sha1(overrides.encode()).hexdigest()[:8]}"


def register_configs() -> None:
    ConfigStore.instance().store(name="base_config", node=Config)
    OmegaConf.register_new_resolver("rapid_dirname", job_dirname, replace=True)


def resolve_precision(cfg: Config, cuda: bool, bf16: bool) -> tuple[str, str]:
    """(train.mixed_precision, vLLM engine dtype) with `auto` resolved, `bf16` saying whether the device computes
    bf16 fast (hardware.fast_bf16). There: fp32 master weights, bf16 autocast and a bf16 engine (fast, and the
    weights still take every small update; algo.engine_correction corrects for the engine/trainer gap bf16
    opens); elsewhere fp32 throughout. An explicit bf16 where the device has none would only be slower: refused."""
    mixed = cfg.train.mixed_precision
    engine = cfg.sampler.dtype
    if not bf16:
        for key, value in (("train.mixed_precision", mixed), ("sampler.dtype", engine)):
            if value in ("bf16", "bfloat16"):
                lacks = "compute capability < 8.0" if cuda else "no amx_bf16 or avx512_bf16 flag"
                raise RapidError(f"{key}={value}: this {'GPU' if cuda else 'CPU'} has no fast bf16 units ({lacks}), "
                                 f"so bf16 would run slower than fp32; leave {key}=auto (fp32 here)")
    if mixed == "auto":
        mixed = "bf16" if bf16 else "none"
    if engine == "auto":
        engine = "bfloat16" if bf16 else cfg.model.dtype
    return mixed, engine


def config_dir() -> str:
    """conf/ inside an installed wheel, else the repository's top-level conf/ (editable install)."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "conf", here.parent.parent / "conf"):
        if (candidate / "config.yaml").exists():
            return str(candidate)
    raise SystemExit("error: rapid's conf/ directory is missing from the installation; reinstall with `make install`")


def compose_config(overrides: list[str]):
    """The config `rapid train <overrides>` would run with (for tests, scripts and the pre-check)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
            return compose("config", overrides=overrides)
    finally:
        GlobalHydra.instance().clear()
