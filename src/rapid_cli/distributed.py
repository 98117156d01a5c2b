"""Data-parallel RAPID: one process per device, started by `torchrun` (or by SLURM through submitit).

Every rank draws the same A*M prompts each round and owns an equal, contiguous share of each
mini-batch's M prompt groups: it generates, scores and recomputes log-probs only for those, and its
loss is the mean over its own sequences, so averaging gradients across ranks (DDP's all-reduce, or
FSDP2's reduce-scatter) gives exactly the single-process mean over all M groups. Group baselines never
cross ranks because groups are never split. Rank 0 alone evaluates, logs and writes checkpoints.

`train.parallel`: `none` (one process), `ddp` (replicated weights, DistributedDataParallel) or `fsdp`
(weights, gradients and optimizer state sharded with FSDP2 `fully_shard`; the sampler then gets its
own full copy of the weights, gathered after each round).
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from rapid_cli.config import TrainConfig
from rapid_cli.errors import RapidError


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    parallel: str = "none"

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1 or self.parallel != "none"


def _from_slurm() -> None:
    """Under SLURM without torchrun (the submitit launcher starts one task per GPU), derive the
    torch.distributed variables from SLURM's."""
    if "RANK" in os.environ or "SLURM_PROCID" not in os.environ or int(os.environ.get("SLURM_NTASKS", "1")) < 2:
        return
    from submitit.helpers import TorchDistributedEnvironment

    TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


def setup(train: TrainConfig, prompts_per_step: int, device: str) -> Dist:
    """Joins the process group when launched with several processes; a plain run returns Dist()."""
    _from_slurm()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    parallel = train.parallel
    if world > 1 and parallel == "none":
        raise RapidError(f"started with {world} processes but train.parallel=none; set train.parallel=ddp or fsdp")
    if parallel == "none":
        return Dist()
    if "RANK" not in os.environ:
        raise RapidError(f"train.parallel={parallel} needs a distributed launch: torchrun --nproc-per-node N -m "
                         "rapid_cli train ...")
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available() and device != "cpu"
    if cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        # The rendezvous and gloo's connections are made under the group's timeout, and ranks reach them as far
        # apart as their interpreters take to start; that wait is line_up's kind, so it gets PATIENCE, and the
        # group's collectives get train.dist_timeout_s afterwards.
        dist.init_process_group("nccl" if cuda else "gloo", timeout=PATIENCE)
        dist.distributed_c10d._set_pg_timeout(timedelta(seconds=train.dist_timeout_s))
    global _patient
    # A second, CPU-side group for waiting for the slowest rank (see line_up). Collective: every rank creates it.
    _patient = dist.new_group(backend="gloo", timeout=PATIENCE)
    if prompts_per_step % world:
        raise RapidError(f"algo.prompts_per_step={prompts_per_step} must be a multiple of the {world} processes "
                         "(each rank owns whole prompt groups of every mini-batch)")
    return Dist(rank, world, local_rank, parallel)


def device_for(d: Dist, name: str) -> torch.device:
    if d.active and torch.cuda.is_available() and name != "cpu":
        return torch.device("cuda", d.local_rank)
    from rapid_cli.policy import pick_device

    return pick_device(name)


def owned_rows(d: Dist, n_prompts: int, prompts_per_step: int) -> list[int]:
    """Indices (into the round's prompts) of the prompts this rank owns: its contiguous share of every
    mini-batch. 1 rank: all of them.

    >>> owned_rows(Dist(1, 2), 8, 4)
    [2, 3, 6, 7]
    """
    share = prompts_per_step // d.world
    return [i for i in range(n_prompts) if (i % prompts_per_step) // share == d.rank]


def wrap(d: Dist, model, mixed_precision: str):
    """The module to train: DDP around the model, or the model sharded in place by FSDP2."""
    # Both wrappers begin with a collective, which ranks reach after loading the task and model on their
    # own, seconds apart on a busy machine: they line up first where no timeout applies.
    line_up(d)
    if d.parallel == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [d.local_rank] if next(model.parameters()).is_cuda else None
        return DistributedDataParallel(model, device_ids=ids)
    if d.parallel == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
            if mixed_precision == "bf16" else MixedPrecisionPolicy()
        for layer in _decoder_layers(model):
            fully_shard(layer, mp_policy=policy)
        fully_shard(model, mp_policy=policy)
        return model
    return model


def _decoder_layers(model) -> list:
    layers = getattr(getattr(model, "model", model), "layers", None)
    if layers is None:
        raise RapidError(f"train.parallel=fsdp: cannot find the decoder layers of {type(model).__name__}; use "
                         "train.parallel=ddp")
    return list(layers)


def stream_full_weights(model) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, full tensor) for every parameter and buffer, one at a time, whether `model` is plain, DDP or
    FSDP2-sharded, so a consumer (the sampler's weight load) takes each before the next is gathered: FSDP then
    holds one extra full parameter at a time instead of the whole fp32 model (6 GB at 1.5B). With FSDP2 every
    `next()` is a collective (DTensor.full_tensor): every rank must draw every item, in this order."""
    from rapid_cli.lora import merged_state

    # LoRA: each adapted weight merged, under the base model's names, in float32 for the engine to round once
    for name, value in merged_state(model, keep_float32=True):
        yield name, (value.full_tensor() if hasattr(value, "full_tensor") else value)


def optimizer_state(model, optimizer) -> dict:
    """The optimizer's full state keyed by parameter name, the same for plain, DDP and FSDP2 models (so a
    checkpoint resumes in any mode). With FSDP2 this is a collective: every rank calls it, rank 0 gets
    the gathered state and the others an empty dict."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_optimizer_state(model, optimizer, state: dict) -> None:
    """Loads `optimizer_state`'s output on every rank (FSDP2 keeps each rank's shard of it)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    kernels = [{k: g[k] for k in ("fused", "foreach") if k in g} for g in optimizer.param_groups]
    set_optimizer_state_dict(model, optimizer, optim_state_dict=state, options=StateDictOptions(full_state_dict=True))
    for group, kernel in zip(optimizer.param_groups, kernels, strict=True):
        group.update(kernel)  # which kernel runs belongs to this run's parameters, not to the saving run's


def reduce_metrics(d: Dist, mean: dict[str, float] | None = None, max: dict[str, float] | None = None,
                   sum: dict[str, float] | None = None) -> dict[str, float]:
    """Combines each rank's numbers into the whole batch's, by the rule of the argument they are passed in:
    `mean` averaged over ranks, `max` their maximum, `sum` added up. One flat dict comes back, with every key
    any rank passed: a key some ranks lack (time/eval, rank 0's alone; a loss statistic of a rank whose rows
    were all skipped) is combined over the ranks that have it."""
    mean, maxes, sums = mean or {}, max or {}, sum or {}
    if d.world == 1:
        return {**mean, **maxes, **sums}
    every = [None] * d.world
    dist.all_gather_object(every, (sorted(mean), sorted(maxes), sorted(sums)))
    union = [sorted(set().union(*(set(keys[i]) for keys in every))) for i in range(3)]
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    added = torch.tensor([mean.get(k, 0.0) for k in union[0]] + [float(k in mean) for k in union[0]]
                         + [sums.get(k, 0.0) for k in union[2]], dtype=torch.float64, device=device)
    maxed = torch.tensor([maxes.get(k, -math.inf) for k in union[1]], dtype=torch.float64, device=device)
    dist.all_reduce(added, op=dist.ReduceOp.SUM)
    dist.all_reduce(maxed, op=dist.ReduceOp.MAX)
    added, maxed, n = added.tolist(), maxed.tolist(), len(union[0])
    out = {k: added[i] / added[n + i] for i, k in enumerate(union[0])}
    out.update({k: added[2 * n + i] for i, k in enumerate(union[2])})
    out.update({k: maxed[i] for i, k in enumerate(union[1])})
    return out


def any_rank(d: Dist, flag: bool) -> bool:
    """True on every rank when it is True on any (a signal may reach one rank only; all must stop together)."""
    return reduce_metrics(d, max={"flag": float(flag)})["flag"] > 0


def broadcast(d: Dist, value):
    """Rank 0's `value` on every rank (e.g. its run directory: the other ranks' Hydra dirs are throwaway)."""
    if d.world == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@contextlib.contextmanager
def process_group(train: TrainConfig, prompts_per_step: int, device: str):
    """`setup` for the length of a job: the group is left however the job ends. After an error no barrier
    is waited on, since the other ranks may be gone or stuck; the group is only destroyed. An exception
    every rank raises at the same point (`every_rank`, e.g. a signal stop all ranks agreed on) ends as a
    normal job does."""
    d = setup(train, prompts_per_step, device)
    try:
        yield d
    except BaseException as err:
        if getattr(err, "every_rank", False):
            shutdown(d)
        elif d.active and dist.is_initialized():
            dist.destroy_process_group()
        raise
    shutdown(d)


# Ranks wait for each other where the work before differs in length: rank 0 evaluating and writing checkpoints
# alone, each rank loading the model or sampling and scoring its own prompts at its own pace. Were they to wait
# inside their next NCCL collective, a long evaluation, a slow filesystem or one rank's slow rewards would pass
# train.dist_timeout_s (NCCL's watchdog: 600 s) and kill a healthy job. They wait instead at a barrier of a
# gloo group whose timeout is a week: gloo notices a peer that died (its TCP connection closes, and torchrun
# stops the job anyway), so only live ranks keep the others waiting, and the collective timeout keeps
# catching collectives that really hang.
PATIENCE = timedelta(days=7)
_patient = None  # the gloo group with that timeout, made by setup()


def line_up(d: Dist) -> None:
    """Returns once every rank has arrived here, however long that took."""
    if d.world > 1:
        dist.barrier(group=_patient)


def same_on_all_ranks(d: Dist, value, what: str, fix: str) -> None:
    """Raises on every rank (instead of hanging in a later collective) when some rank's `value` differs from
    rank 0's, e.g. the checkpoint a resume starts from."""
    if d.world == 1:
        return
    every = [None] * d.world
    dist.all_gather_object(every, value, group=_patient)
    differ = [r for r, v in enumerate(every) if v != every[0]]
    if differ:
        raise RapidError(f"rank {differ[0]} sees {what} {every[differ[0]]!r} but rank 0 sees {every[0]!r}; {fix}")


def shutdown(d: Dist) -> None:
    """Leaves the process group once every rank is done: a rank that tears gloo down while rank 0 is
    still saving or plotting can abort (std::terminate in gloo's connection threads)."""
    if d.active and dist.is_initialized():
        line_up(d)
        dist.destroy_process_group()
