"""The learner: the policy being trained with its optimizer and schedule, and every pass over it.

It owns the model (wrapped for DDP/FSDP2 through `distributed.wrap`), the frozen reference copy when
the algorithm's KL term needs one, AdamW and the LR schedule, autocast, and micro-batching. The loop
sees a small surface:

    moving_rows(ro, own_old) -> [B] bool | None     rows whose gradient can be non-zero (ro.moving)
    logprobs(ro, rows, reference=False) -> [n, T]  log pi per completion token (pi_old, reference)
    step(ro, rows, audit=False) -> StepStats        one optimizer step on a mini-batch of groups
    state_dict() / load_state_dict(state)          optimizer and schedule, for checkpoints
    full_weights()                                 (name, full tensor) pairs for the sampler's sync
    engine_model, checkpoint_weights()             what a sampler and a checkpoint start from

A step's gradient does not depend on how its mini-batch is cut: the loss's denominator is the whole
mini-batch's (every rank's rows included), computed from the rollouts before any forward pass
(algorithms/aggregate.py), and each micro-batch's loss is its part of that one sum. Rows outside
`ro.moving` (groups whose part of that sum has an exactly zero gradient) are never forwarded: the
sum and its gradient are the same without them.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from rapid_cli import algorithms, distributed
from rapid_cli.algorithms.aggregate import effective_sample_size
from rapid_cli.algorithms.contract import (
    METRICS,
    WEIGHT_MEAN,
    WEIGHT_SQ_SUM,
    WEIGHT_SUM,
    Combine,
    LossBatch,
    declared,
)
from rapid_cli.algorithms.engine import engine_weights
from rapid_cli.config import AlgoConfig, OptimizerConfig
from rapid_cli.console import console
from rapid_cli.policy import (
    PACKED,
    check_packable_head,
    completion_logprobs,
    pack,
    packed_attention,
)
from rapid_cli.types import Rollouts

AUDIT_KEY = "iw/sampler_seq_logw_gap_max"
ROWS = "rows*"  # a loss metric's row-weighted sum, on its way to a mean over every rank's rows


def build_optimizer(opt_cfg: OptimizerConfig, model: torch.nn.Module, total_steps: int,
                    lr: float | None = None
                    ) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW on the trainable parameters at `lr` (default optimizer.lr) and its warm-up / cosine
    schedule."""
    lr = opt_cfg.lr if lr is None else lr
    params = [p for p in model.parameters() if p.requires_grad]  # LoRA: the adapters only
    # The fused kernel is ~4x faster than the default per-tensor loop on CPU (0.07 s vs 0.26 s a
    # step for 108M parameters); FSDP2's sharded DTensor parameters keep the default.
    fused = not any(hasattr(p, "full_tensor") for p in params)
    optimizer = torch.optim.AdamW(params, lr=lr, betas=tuple(opt_cfg.betas),
                                  weight_decay=opt_cfg.weight_decay, fused=fused or None)

    def factor(step: int) -> float:
        if step < opt_cfg.warmup_steps:
            return (step + 1) / opt_cfg.warmup_steps
        if opt_cfg.schedule == "cosine":
            progress = (step - opt_cfg.warmup_steps) / max(1, total_steps - opt_cfg.warmup_steps)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return 1.0

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def set_base_lr(optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler,
                lr: float) -> None:
    """A resumed run takes `optimizer.lr` as given now; the saved schedule state would otherwise
    bring back the old rate silently. The schedule's position (warm-up, cosine) is kept."""
    old = scheduler.base_lrs[0]
    if old == lr:
        return
    console.print(f"[yellow]learning rate: {old:g} in the checkpoint, {lr:g} from here on[/]")
    scheduler.base_lrs = [lr for _ in scheduler.base_lrs]
    factor = scheduler.lr_lambdas[0](scheduler.last_epoch)
    for group in optimizer.param_groups:
        group["initial_lr"], group["lr"] = lr, lr * factor


def micro_batches(rows: slice, size: int) -> Iterator[slice]:
    for start in range(rows.start, rows.stop, size):
        yield slice(start, min(start + size, rows.stop))


def token_micro_batches(rows: slice, group_size: int, cost: Callable[[slice], int],
                        budget: int) -> Iterator[slice]:
    """`rows` cut into runs of whole groups, each as long as `cost` (the positions a forward over
    those rows computes, padding included) stays within `budget`; a group over the budget goes
    alone.

    >>> lengths = [2, 2, 3, 3, 9, 9, 1, 1]  # 4 groups of 2 rows, padded to the longest row
    >>> cost = lambda mb: (mb.stop - mb.start) * max(lengths[mb])
    >>> [(mb.start, mb.stop) for mb in token_micro_batches(slice(0, 8), 2, cost, 12)]
    [(0, 4), (4, 6), (6, 8)]
    """
    start = rows.start
    while start < rows.stop:
        stop = start + group_size
        while stop < rows.stop and cost(slice(start, stop + group_size)) <= budget:
            stop += group_size
        yield slice(start, stop)
        start = stop


@dataclass
class Audit:
    """The sampler's behaviour log-probs against the trainer's for the same tokens, taken in the
    round's first step (where the policy is still the one that sampled), over every rank's rows of
    it. What the importance weight feels is the gap summed over a sequence (its error in log w), so
    that is the one `algo.old_logprobs=auto` decides on; a per-token gap of 5e-4 of one sign is
    log w = -1 over 2048 tokens."""

    seq_logw_gap_max: float  # the worst |sum_t gap| of a sequence
    logprob_gap_max: float  # the worst |gap| of a token
    logprob_gap_sum: float  # |gap| summed over tokens
    tokens: float  # tokens compared

    @classmethod
    def of(cls, trainer: torch.Tensor, sampler: torch.Tensor, mask: torch.Tensor) -> Audit:
        """All [B, T]; `mask` 1 on the tokens compared."""
        gap = torch.where(mask > 0, trainer.float() - sampler, torch.zeros_like(sampler))  # [B, T]
        return cls(gap.sum(-1).abs().max().item(), gap.abs().max().item(), gap.abs().sum().item(),
                   mask.sum().item())

    def merge(self, other: Audit) -> Audit:
        return Audit(max(self.seq_logw_gap_max, other.seq_logw_gap_max),
                     max(self.logprob_gap_max, other.logprob_gap_max),
                     self.logprob_gap_sum + other.logprob_gap_sum, self.tokens + other.tokens)

    def over_ranks(self, d: distributed.Dist) -> Audit:
        worst = {"seq": self.seq_logw_gap_max, "tok": self.logprob_gap_max}
        added = {"gap": self.logprob_gap_sum, "tokens": self.tokens}
        whole = distributed.reduce_metrics(d, max=worst, sum=added)
        return Audit(whole["seq"], whole["tok"], whole["gap"], whole["tokens"])

    def metrics(self) -> dict[str, float]:
        """The gaps, and the tokens they were measured on: none when the round's first mini-batch
        had no moving rows (then no gap is reported and `algo.old_logprobs=auto` decides nothing
        this round)."""
        if not self.tokens:
            return {"iw/sampler_audit_tokens": 0.0}
        return {AUDIT_KEY: self.seq_logw_gap_max,
                "iw/sampler_logprob_gap_max": self.logprob_gap_max,
                "iw/sampler_logprob_gap_mean": self.logprob_gap_sum / self.tokens,
                "iw/sampler_audit_tokens": self.tokens}


@dataclass
class StepStats:
    """One optimizer step on one mini-batch. Over its micro-batches the loss's parts add up, its
    metrics combine as algorithms/contract.py METRICS declares (`means`: row-weighted means of every
    rank's moving rows; `maxima`); `grad_norm`, `skipped`, `ess` and `audit` cover every rank too.
    Over a round's steps and the ranks: `update_metrics`."""

    loss: float  # this rank's part of the mini-batch's loss (DDP averages the gradients alike)
    grad_norm: float  # of the whole step's gradient, before clipping
    lr: float  # the rate this step used (the scheduler moves on after it)
    skipped: bool  # a non-finite loss or gradient norm on some rank: no update anywhere
    # effective sample size (sum w)^2 / sum w^2 over every rank's computed (moving) rows
    ess: float
    means: dict[str, float]  # over every rank's moving rows; no loss statistic when none moved
    maxima: dict[str, float]
    rows: int = 0  # this rank's rows of the mini-batch
    skipped_rows: int = 0  # of them, those left out (algo.skip_zero_advantage)
    audit: Audit | None = None  # the round's first step's, when the sampler reports log-probs


def update_metrics(steps: list[StepStats]) -> tuple[dict[str, float], dict[str, float]]:
    """A round's update phase as logged metrics: (values to average over ranks, values to max over
    ranks). Over the round's steps: means, except the count of skipped steps, the rate (the last
    step's) and the maxima. The loss's own statistics (those algorithms/contract.py METRICS names a
    `logged_as` for) are over the moving rows of the steps that had any; a round without any has
    none of them."""
    n, rows = len(steps), sum(s.rows for s in steps)
    computed = [s for s in steps if WEIGHT_MEAN in s.means]  # the steps that computed some row
    means = {
        "train/loss": sum(s.loss for s in steps) / n,
        "train/grad_norm": sum(s.grad_norm for s in steps) / n,
        "train/skipped_steps": float(sum(s.skipped for s in steps)),
        "train/skipped_rows_frac": sum(s.skipped_rows for s in steps) / max(1, rows),
        "train/lr": steps[-1].lr,
    }
    if WEIGHT_MEAN in steps[0].means:
        means["iw/first_step_mean"] = steps[0].means[WEIGHT_MEAN]
    if WEIGHT_MEAN in steps[-1].means:
        means["iw/last_step_mean"] = steps[-1].means[WEIGHT_MEAN]
    if computed:
        means["iw/ess"] = sum(s.ess for s in computed) / len(computed)
    maxima = {}
    for metric in METRICS.values():
        if metric.logged_as is None:
            continue
        if metric.combine is Combine.ROW_MEAN:
            having = [s.means[metric.name] for s in steps if metric.name in s.means]
            if having:
                means[metric.logged_as] = sum(having) / len(having)
        elif metric.combine is Combine.MAX:
            having = [s.maxima[metric.name] for s in steps if metric.name in s.maxima]
            if having:
                maxima[metric.logged_as] = max(having)
    return means, maxima


@dataclass
class LossTotals:
    """A step's loss and loss metrics over its micro-batches so far, each metric combined as
    algorithms/contract.py METRICS declares: row-weighted sums (made means over every rank's rows by
    `over_ranks`), maxima and sums; a batch's own (ess) is left out."""

    loss: float = 0.0  # the parts add up to the mini-batch's loss
    row_sums: dict[str, float] = field(default_factory=dict)
    maxima: dict[str, float] = field(default_factory=dict)
    sums: dict[str, float] = field(default_factory=lambda: {WEIGHT_SUM: 0.0, WEIGHT_SQ_SUM: 0.0})

    def add(self, loss: float, metrics: dict[str, float], rows: int) -> None:
        """One micro-batch's loss and metrics, over its `rows` rows."""
        self.loss += loss
        for name, value in metrics.items():
            how = declared(name).combine
            if how is Combine.MAX:
                self.maxima[name] = max(self.maxima.get(name, value), value)
            elif how is Combine.SUM:
                self.sums[name] = self.sums.get(name, 0.0) + value
            elif how is Combine.ROW_MEAN:
                self.row_sums[name] = self.row_sums.get(name, 0.0) + value * rows

    def over_ranks(self, d: distributed.Dist, rows: int) -> tuple[dict, dict, dict]:
        """(row means, maxima, sums) over every rank's computed rows (this rank's: `rows`); ranks
        skip unequally, so each rank's row sums count by its rows."""
        sums = {**self.sums, "rows": float(rows), **{ROWS + k: v for k, v in self.row_sums.items()}}
        total = distributed.reduce_metrics(d, max=self.maxima, sum=sums)
        every_rank = total["rows"]
        means = {k.removeprefix(ROWS): v / every_rank
                 for k, v in total.items() if k.startswith(ROWS)}

        def combined(how: Combine) -> dict[str, float]:
            return {k: v for k, v in total.items() if k in METRICS and METRICS[k].combine is how}

        return means, combined(Combine.MAX), combined(Combine.SUM)


@dataclass
class Share:
    """What a pass over some rows computes: their moving groups as rollouts of their own (`part`, or
    a stand-in group when there are none), the rows of the round they are (`rows`, [n]), and the
    micro-batches of `part`, each marked whether it counts."""

    part: Rollouts
    rows: torch.Tensor
    passes: list[tuple[slice, bool]]
    # a step with nothing to compute on any rank: its one pass is a forward without autograd
    probe: bool = False

    @property
    def computed(self) -> int:
        return len(self.rows)


def _zero_from(logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """0, computed from the log-probs of the mask's tokens: NaN where they are (a diverged policy),
    and, backpropagated, a pass through the model's weights like every rank's other passes."""
    return torch.where(mask > 0, logprobs, 0.0).sum() * 0


class Learner:
    def __init__(self, model: torch.nn.Module, algo: AlgoConfig, optim: OptimizerConfig, *,
                 pad_id: int, temperature: float, total_steps: int,
                 d: distributed.Dist | None = None, device: str | torch.device = "cpu",
                 precision: str = "none", reference: torch.nn.Module | None = None,
                 lr: float | None = None):
        """`model`: the plain policy (wrapped here for DDP/FSDP2). `algo`, `optim`: the config's
        algo and optimizer sections; `temperature`: the sampler's (log-probs are of
        softmax(logits/T)); `total_steps`: optimizer steps in the whole run (the cosine schedule's
        length); `precision`: resolved train.mixed_precision (none | bf16); `reference`: the initial
        policy for a KL term (default: a copy of `model`, which is the initial policy unless the run
        resumes); `lr`: the learning rate (default optimizer.lr; the plan's, with LoRA's
        lr_scale)."""
        self.algo, self.optim, self.pad_id, self.temperature = algo, optim, pad_id, temperature
        self.lr = optim.lr if lr is None else lr
        self.d = d or distributed.Dist()
        self.device = torch.device(device)
        self.algorithm = algorithms.get(algo.name)
        self.options = self.algorithm.loss_options(algo)
        # the initial policy, frozen, for a KL penalty: copied before any sharding
        self.reference = None
        if self.algorithm.needs_reference(algo):
            initial = reference if reference is not None else copy.deepcopy(model)
            self.reference = initial.eval().requires_grad_(False)
        # What a sampler generates with: the plain policy itself, or under FSDP2, which shards it, a
        # full copy of its own (refreshed at each sync through `full_weights`).
        self.engine_model = copy.deepcopy(model) if self.d.parallel == "fsdp" else model
        self.model = distributed.wrap(self.d, model, precision)  # what forward/backward go through
        # autocast to bf16 (FSDP2 casts in its own policy)
        self.bf16 = precision == "bf16" and self.d.parallel != "fsdp"
        self.optimizer, self.scheduler = build_optimizer(optim, self.model, total_steps, self.lr)
        # dense | segments, with algo.packing
        self.attention = packed_attention(algo.packed_attention, model)
        if algo.packing:
            check_packable_head(model)

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def moving_rows(self, ro: Rollouts, own_old: torch.Tensor) -> torch.Tensor | None:
        """The rows whose part of their step's gradient can be non-zero, by the algorithm's
        zero-gradient rule (`Rollouts.moving`); None: all, when `algo.skip_zero_advantage` is off.
        Decided from the rewards before any forward pass; `own_old` [B] bool marks the rows whose
        pi_old is their step's own log-probs (BehaviourLogprobs.own_rows)."""
        if not self.algo.skip_zero_advantage:
            return None
        rewards = torch.tensor(ro.rewards, dtype=torch.float32)
        group_size = self.algo.group_size
        return ~self.algorithm.zero_gradient_rows(rewards, group_size, self.options, own_old)

    @torch.no_grad()
    def logprobs(self, ro: Rollouts, rows: slice = slice(None),
                 reference: bool = False) -> torch.Tensor:
        """log pi per completion token of `rows` under the current policy (or the frozen reference):
        [n, T] float32 on the CPU, T = ro.width(), 0 past each completion's end and on rows outside
        `ro.moving` (never computed). Run in eval mode, micro-batched."""
        model = self.reference if reference else self.model
        rows = slice(*rows.indices(len(ro.rewards)))
        out = torch.zeros((rows.stop - rows.start, ro.width()), dtype=torch.float32)
        share = self._share(ro, rows)
        was_training = model.training
        model.eval()
        with self.autocast():
            for mb, counted in share.passes:
                lp, mask = self._forward(model, share.part, mb)  # [b, C]
                if not counted:
                    continue
                lp = torch.where(mask > 0, lp, torch.zeros_like(lp))
                out[share.rows[mb] - rows.start, : lp.shape[1]] = lp.cpu()
        model.train(was_training)
        return out

    def step(self, ro: Rollouts, rows: slice, audit: bool = False) -> StepStats:
        """One optimizer step on the whole prompt groups `rows` (this rank's share of a mini-batch),
        accumulated over micro-batches of whole groups. pi_old is `ro.old_logprobs` on `ro.old_rows`
        and the step's own detached log-probs elsewhere. `audit`: compare those log-probs with the
        sampler's (only right while the policy is still the one that sampled: the round's first
        step)."""
        with self.autocast():
            return self._step(ro, rows, audit and ro.sampler_logprobs is not None)

    def _step(self, ro: Rollouts, rows: slice, audit: bool) -> StepStats:
        group_size = self.algo.group_size
        rewards = torch.tensor(ro.rewards[rows], dtype=torch.float32)  # [B]
        denominator = self._denominator(ro, rows, rewards)
        share = self._share(ro, rows, step=True)
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        totals, seen = self._accumulate(share, denominator, audit)
        means, maxima, sums = totals.over_ranks(self.d, share.computed)
        # over the whole mini-batch: the algorithm's figures that count rows never computed
        means |= self.algorithm.batch_metrics(rewards, group_size, self.options)
        lr = self.optimizer.param_groups[0]["lr"]
        grad_norm, skipped = self._update(totals.loss)
        ess = effective_sample_size(sums[WEIGHT_SUM], sums[WEIGHT_SQ_SUM])
        return StepStats(totals.loss, grad_norm, lr, skipped, ess, means, maxima, rows=len(rewards),
                         skipped_rows=len(rewards) - share.computed,
                         audit=seen.over_ranks(self.d) if audit else None)

    def _denominator(self, ro: Rollouts, rows: slice, rewards: torch.Tensor) -> float:
        """The loss's denominator for the mini-batch `rows`: it covers every row of it, moving or
        not. DDP averages gradients over ranks, so each rank divides by the mean of the ranks'
        denominators."""
        mask = ro.completion_mask[rows, : ro.width(rows)]  # [B, C]
        mine = self.algorithm.denominator(mask, rewards, self.algo.group_size, self.options)
        mean = distributed.reduce_metrics(self.d, mean={"d": mine})["d"]
        return mean or 1.0  # 0: nothing kept, the loss is 0

    def _accumulate(self, share: Share, denominator: float,
                    audit: bool) -> tuple[LossTotals, Audit]:
        """Forward and backward over the share's passes, accumulating the step's gradient: (the loss
        and its metrics, the audit of the sampler's log-probs when asked for)."""
        part, totals, seen = share.part, LossTotals(), Audit(0.0, 0.0, 0.0, 0.0)
        for i, (mb, counted) in enumerate(share.passes):
            with torch.set_grad_enabled(not share.probe):
                logprobs, mask = self._forward(self.model, part, mb)  # [b, C]
            # a rank with no moving row audits its stand-in group, once however often it repeats it
            if audit and (counted or (not share.computed and i == 0)):
                mu = part.sampler_logprobs[mb, : logprobs.shape[1]].to(self.device)
                seen = seen.merge(Audit.of(logprobs.detach(), mu, mask))
            if share.probe:
                # the step's gradient is exactly zero (`_zero_gradient`), but a diverged policy's
                # non-finite log-probs still refuse it, as they would have refused the step that
                # computed every row
                totals.loss += _zero_from(logprobs, mask).item()
                self._zero_gradient()
                if hasattr(self.model, "reshard"):
                    # FSDP2 keeps the root's gathered weights after a forward that no backward
                    # follows, and would compute the next forward with them after AdamW has
                    # changed the shards
                    self.model.reshard()
                continue
            if not counted:
                # a collective, as the other ranks' passes are; adds 0
                _zero_from(logprobs, mask).backward()
                continue
            batch, corrected = self._loss_batch(part, mb, logprobs, mask, denominator)
            out = self.algorithm.compute(batch, self.options)
            out.loss.backward()
            totals.add(out.loss.item(), out.metrics | corrected, mb.stop - mb.start)
        return totals, seen

    def _zero_gradient(self) -> None:
        """A zero gradient for every trained weight, for AdamW to step on (None would leave a weight
        out of the step: no weight decay, no moment decay)."""
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                p.grad = torch.zeros_like(p)

    def _update(self, loss: float) -> tuple[float, bool]:
        """Clips the accumulated gradient and steps AdamW and the schedule: (the gradient's norm
        before clipping, whether the step was skipped). One NaN in the gradient would reach every
        weight through AdamW: a step with a non-finite loss or gradient norm on any rank is skipped
        on every rank."""
        max_norm = self.optim.max_grad_norm or float("inf")
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        if hasattr(norm, "full_tensor"):  # FSDP2: a DTensor
            norm = norm.full_tensor()
        grad_norm = norm.item()
        finite = math.isfinite(loss) and math.isfinite(grad_norm)
        skipped = distributed.any_rank(self.d, not finite)
        if skipped:
            self.optimizer.zero_grad(set_to_none=True)
        else:
            self.optimizer.step()
            self.scheduler.step()
        return grad_norm, skipped

    def _share(self, ro: Rollouts, rows: slice, step: bool = False) -> Share:
        """The moving groups of `rows` and the passes over them (`_micro_batches`), then, under DDP
        and FSDP2, uncounted repeats until every rank has as many passes as the one with the most:
        there each forward and backward is a collective, and ranks' shares split unequally (by
        `algo.micro_batch_tokens`, by skipping). A rank with nothing to compute repeats a stand-in,
        the shortest group of `rows`, uncounted.

        `step`: an optimizer step. When nothing moves on any rank its gradient is exactly zero, and
        its one pass is a probe: the stand-in's forward without autograd, whose log-probs are
        non-finite when the policy has diverged (which the skipped rows would have shown: the step
        is refused, SkipGuard stops the run before a save); the first step's also audits the
        sampler on it."""
        groups = ro.moving_groups(rows)
        group_size = ro.group_size
        part = ro.take(groups or self._stand_in(ro, rows))
        passes = []
        if groups:
            passes = [(mb, True) for mb in self._micro_batches(part, slice(0, len(part.rewards)))]
        most = len(passes)
        if self.d.world > 1:
            most = int(distributed.reduce_metrics(self.d, max={"passes": len(passes)})["passes"])
        filler = passes[-1][0] if passes else slice(0, group_size)
        probe = step and most == 0  # on every rank alike: under FSDP2 a forward is a collective
        passes += [(filler, False)] * (max(most, int(probe)) - len(passes))
        origin = [g * group_size + i for g in groups for i in range(group_size)]
        return Share(part, torch.tensor(origin, dtype=torch.long), passes, probe)

    def _stand_in(self, ro: Rollouts, rows: slice) -> list[int]:
        """The group of `rows` whose forward computes the fewest positions, as a list (empty when
        `rows` is)."""
        G = ro.group_size
        groups = range(rows.start // G, rows.stop // G)
        return ([min(groups, key=lambda g: self._positions(ro, slice(g * G, (g + 1) * G)))]
                if groups else [])

    def _micro_batches(self, ro: Rollouts, rows: slice) -> Iterator[slice]:
        """Whole groups of `rows`: `algo.micro_batch_size` rows at a time, or as many as fit in
        `algo.micro_batch_tokens` positions of the forward pass (`_positions`)."""
        if self.algo.micro_batch_tokens is None:
            return micro_batches(rows, self.algo.micro_batch_size)
        return token_micro_batches(rows, self.algo.group_size, lambda mb: self._positions(ro, mb),
                                   self.algo.micro_batch_tokens)

    def _positions(self, ro: Rollouts, mb: slice) -> int:
        """The positions `_forward` computes for micro-batch `mb`, padding included: packed, one row
        per group as long as its longest group; padded, one row per completion as long as the
        longest prompt plus the longest completion."""
        comp = ro.generations.completion_ids
        if self.algo.packing:
            G = self.algo.group_size
            groups = range(mb.start // G, mb.stop // G)
            return len(groups) * max(len(ro.prompt_ids[g])
                                     + sum(len(c) for c in comp[g * G : (g + 1) * G])
                                     for g in groups)
        return (mb.stop - mb.start) * (max(len(p) for p in ro.row_prompts(mb)) + ro.width(mb))

    def _forward(self, model, ro: Rollouts, mb: slice) -> tuple[torch.Tensor, torch.Tensor]:
        """(log pi per completion token, completion mask) of micro-batch `mb` under `model`: [b, C]
        each, C = its longest completion. `algo.packing`: each group's prompt encoded once, no
        padding between completions, under the dense mask (policy.GroupedBatch) or the segmented
        attention (policy.SegmentedBatch), `self.attention`; off: the padded rows
        [prompt | completion] (policy.PackedBatch), the reference the packed paths are tested
        against."""
        completions = ro.generations.completion_ids[mb]
        if self.algo.packing:
            G = self.algo.group_size
            prompts = [ro.prompt_ids[g] for g in range(mb.start // G, mb.stop // G)]
            packer, logprobs = PACKED[self.attention]
            batch = packer(prompts, completions, G, self.pad_id, self.device)
            return logprobs(model, batch, self.temperature), batch.completion_mask
        batch = pack(ro.row_prompts(mb), completions, self.pad_id, self.device)
        return completion_logprobs(model, batch, self.temperature), batch.completion_mask

    def _loss_batch(self, part: Rollouts, mb: slice, logprobs: torch.Tensor, mask: torch.Tensor,
                    denominator: float) -> tuple[LossBatch, dict[str, float]]:
        """The loss's input for micro-batch `mb` (log-probs and completion mask [b, C]): pi_old
        (`_old`), the rewards, the reference log-probs (a KL term) and the engine correction's token
        weights (algorithms/engine.py); and the correction's statistics."""
        old = self._old(part, mb, logprobs)  # [b, C]
        width = old.shape[1]
        rewards = torch.tensor(part.rewards[mb], dtype=torch.float32, device=self.device)  # [b]
        ref = None if part.ref_logprobs is None else part.ref_logprobs[mb, :width].to(self.device)
        weights, stats = None, {}
        if part.engine_correction != "none":
            mu = part.sampler_logprobs[mb, :width].to(self.device)
            mode, cap = part.engine_correction, self.algo.engine_cap
            weights, stats = engine_weights(old, mu, mask, mode, cap)
        batch = LossBatch(logprobs, old, mask, rewards, self.algo.group_size,
                          denominator=denominator, ref_logprobs=ref, token_weights=weights)
        return batch, stats

    def _old(self, ro: Rollouts, mb: slice, logprobs: torch.Tensor) -> torch.Tensor:
        """log pi_old of micro-batch `mb` [b, C]: the recorded one where there is one, else the
        step's own (detached: the policy that sampled those rows is the one this step starts
        from)."""
        now = logprobs.detach()
        if ro.old_logprobs is None:
            return now
        old = ro.old_logprobs[mb, : now.shape[1]].to(self.device)
        if ro.old_rows is None:
            return old
        return torch.where(ro.old_rows[mb].to(self.device)[:, None], old, now)

    def state_dict(self) -> dict:
        """Optimizer state (full, keyed by parameter name, so any parallel layout resumes it) and
        schedule. With FSDP2 a collective: every rank calls it; rank 0 gets the gathered optimizer
        state."""
        return {"optimizer": distributed.optimizer_state(self.model, self.optimizer),
                "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """`state_dict()`'s output, on every rank; the learning rate stays this run's (`lr`)."""
        distributed.load_optimizer_state(self.model, self.optimizer, state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        set_base_lr(self.optimizer, self.scheduler, self.lr)

    def checkpoint_weights(self) -> dict[str, torch.Tensor] | None:
        """The full weights for a checkpoint where the plain model's own state dict is sharded
        (FSDP2; a collective: every rank calls it), else None: the model's state dict is already
        whole."""
        return dict(self.full_weights()) if self.d.parallel == "fsdp" else None

    def full_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Every parameter and buffer of the policy as a plain full tensor, under its Hugging Face
        name, for a sampler's `sync_weights` or a checkpoint. With FSDP2 a collective: every rank
        consumes it whole."""
        yield from distributed.stream_full_weights(self.model)
