"""What every loss takes and returns, and how each metric combines: written once, read by the
learner.

A loss is called `loss(batch, **options) -> LossOutput`: `batch` is one micro-batch's tensors
(`LossBatch`), `options` the `algo` config fields the loss takes (`Loss.options`). Each metric a
loss reports is declared in `METRICS` with how it combines over the micro-batches of a step, the
ranks and the steps of a round, and the name it is logged under; a loss that reports an undeclared
name fails at once (`LossOutput`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

import torch

from rapid_cli.algorithms.aggregate import AGGREGATIONS


@dataclass(frozen=True, eq=False)
class LossBatch:
    """One micro-batch as a loss sees it. Shapes: logprobs, old_logprobs, mask [B, T] (mask 1 on
    completion tokens, 0 on padding); rewards [B]; rows are grouped, B = n_groups * group_size,
    group g = rows g*G .. g*G+G-1.

    >>> zeros = torch.zeros(3, 2)
    >>> LossBatch(zeros, zeros, torch.ones(3, 2), torch.zeros(3), group_size=2)
    Traceback (most recent call last):
    ...
    ValueError: batch of 3 rows is not a whole number of groups of 2
    """

    logprobs: torch.Tensor  # log pi_theta per token, with gradient
    old_logprobs: torch.Tensor  # log pi_old per token, detached
    mask: torch.Tensor
    rewards: torch.Tensor
    group_size: int
    # the whole mini-batch's denominator (aggregate.denominator), so that however the mini-batch is
    # cut into micro-batches and ranks the gradient is the same; None: this batch is the whole batch
    denominator: float | None = None
    ref_logprobs: torch.Tensor | None = None  # [B, T] the frozen reference policy's, for a KL term
    token_weights: torch.Tensor | None = None  # [B, T] the engine correction's weights (engine.py)

    def __post_init__(self):
        rows = self.logprobs.shape[0]
        if rows % self.group_size:
            raise ValueError(f"batch of {rows} rows is not a whole number of groups of "
                             f"{self.group_size}")


class Combine(Enum):
    """How a metric of one micro-batch combines into its step's (over micro-batches, then ranks),
    and the step's into the round's."""

    ROW_MEAN = "row_mean"  # weighted by the rows computed on every rank; a round's: the steps' mean
    MAX = "max"  # the largest, over micro-batches, ranks and steps
    SUM = "sum"  # added up over micro-batches and ranks (a step's effective sample size's parts)
    OWN = "own"  # this batch's alone: a step's is computed from others (ess, from the weight sums)


@dataclass(frozen=True)
class Metric:
    name: str  # the key a loss reports it under
    combine: Combine
    logged_as: str | None = None  # its name in the round's logged metrics; None: not logged itself


ROW_MEAN, MAX, SUM, OWN = Combine.ROW_MEAN, Combine.MAX, Combine.SUM, Combine.OWN

# Every metric a loss (or the engine correction beside it) reports, in the order they are logged.
METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("iw_mean", ROW_MEAN, "iw/mean"),  # sequence weight w, before any clip
    Metric("iw_clipped_mean", ROW_MEAN, "iw/clipped_mean"),  # min(w, c) (RAPID)
    Metric("iw_clip_frac", ROW_MEAN, "iw/clip_frac"),  # rows with w > c (RAPID)
    Metric("staleness", ROW_MEAN, "iw/staleness"),  # mean |log min(w, c)| (RAPID)
    Metric("log_ratio_abs_mean", ROW_MEAN, "iw/log_ratio_abs_mean"),  # |log rho| per token
    Metric("adv_abs_mean", ROW_MEAN, "train/adv_abs_mean"),
    Metric("ppo_clip_frac", ROW_MEAN, "train/ppo_clip_frac"),  # tokens the PPO clip cut
    Metric("kl", ROW_MEAN, "train/kl"),  # k3 KL to the reference per token (a KL term)
    Metric("groups_dropped_frac", ROW_MEAN, "train/groups_dropped_frac"),  # equal rewards (DAPO)
    Metric("engine_weight_mean", ROW_MEAN, "iw/engine_weight_mean"),  # the engine correction's
    Metric("engine_truncated_frac", ROW_MEAN, "iw/engine_truncated_frac"),
    Metric("engine_masked_frac", ROW_MEAN, "iw/engine_masked_frac"),
    Metric("adv_mean", ROW_MEAN),
    Metric("iw_max", MAX, "iw/max"),
    Metric("engine_ratio_max", MAX, "iw/engine_ratio_max"),
    Metric("iw_sum", SUM),  # sum w
    Metric("iw_sq_sum", SUM),  # sum w^2
    Metric("ess", OWN),  # (sum w)^2 / sum w^2 of this batch; a step's is logged as iw/ess
)}


def declared(name: str) -> Metric:
    """The declaration of `name`; an undeclared name is a mistake in the loss that reports it."""
    metric = METRICS.get(name)
    if metric is None:
        raise ValueError(f"loss metric {name!r} is not declared in algorithms/contract.py METRICS")
    return metric


# Names the learner reads for their meaning: every loss reports the mean weight over the rows it
# computed (a step without it computed none), and a step's effective sample size is made of the
# weight sums.
WEIGHT_MEAN = declared("iw_mean").name
WEIGHT_SUM, WEIGHT_SQ_SUM = declared("iw_sum").name, declared("iw_sq_sum").name


@dataclass(frozen=True, eq=False)
class LossOutput:
    """A loss's scalar (this batch's part of the mini-batch's loss) and its metrics, each one
    declared."""

    loss: torch.Tensor
    metrics: dict[str, float]

    def __post_init__(self):
        for name in self.metrics:
            declared(name)


class Loss(Protocol):
    """An algorithm's loss: a function marked by `loss_function`, or a
    baselines.PolicyGradientSpec."""

    aggregation: str  # how it turns its token terms into one number (aggregate.AGGREGATIONS)
    options: Mapping[str, object]  # the algo config fields it takes, with the values it defaults to
    reference: bool  # whether it reads batch.ref_logprobs (a KL penalty to a frozen reference)

    def __call__(self, batch: LossBatch, **options) -> LossOutput: ...


def loss_function(aggregation: str, reference: bool = False) -> Callable[[Callable], Loss]:
    """Marks `fn(batch, *, option=default, ...) -> LossOutput` as a loss with its aggregation; its
    options are its keyword-only parameters."""
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {aggregation!r}; one of {AGGREGATIONS}")

    def mark(fn):
        params = inspect.signature(fn).parameters.values()
        fn.options = {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}
        fn.aggregation, fn.reference = aggregation, reference
        return fn

    return mark


def on_tensors(loss: Loss, logprobs: torch.Tensor, old_logprobs: torch.Tensor, mask: torch.Tensor,
               rewards: torch.Tensor, group_size: int, *, denominator: float | None = None,
               ref_logprobs: torch.Tensor | None = None, token_weights: torch.Tensor | None = None,
               **options) -> tuple[torch.Tensor, dict[str, float]]:
    """`loss` called on plain tensors (the fields of `LossBatch`) and its options: (scalar loss,
    metrics), the shape a test or a notebook wants. The learner builds the `LossBatch` itself."""
    batch = LossBatch(logprobs, old_logprobs, mask, rewards, group_size, denominator=denominator,
                      ref_logprobs=ref_logprobs, token_weights=token_weights)
    out = loss(batch, **options)
    return out.loss, out.metrics
