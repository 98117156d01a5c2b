"""RAPID's loss as a pure function: a `LossBatch` in, a `LossOutput` (scalar loss, metrics) out
(algorithms/contract.py), with its zero-gradient rule beside it."""

from __future__ import annotations

import math

import torch

from rapid_cli.algorithms.aggregate import aggregate
from rapid_cli.algorithms.contract import LossBatch, LossOutput, loss_function, on_tensors
from rapid_cli.algorithms.primitives import (
    clipped_objective,
    masked_log_ratio,
    ratio_metrics,
    sequence_log_weights,
)


def rapid_advantages(rewards: torch.Tensor, group_size: int, w_used: torch.Tensor) -> torch.Tensor:
    """A_i = r_i - b_g with the importance-weighted group baseline b_g = mean_j w~_j r_j, w~ the
    clipped weights. [B] -> [B], no std normalisation.

    >>> rapid_advantages(torch.tensor([1., 0., 0., 0.]), 2, torch.tensor([2., 1., 5., 1.])).tolist()
    [0.0, -1.0, 0.0, 0.0]
    """
    groups = rewards.view(-1, group_size)  # [n_groups, G]
    baseline = (w_used.view(-1, group_size) * groups).mean(-1, keepdim=True)  # [n_groups, 1]
    return (groups - baseline).view(-1)


def rapid_zero_gradient(rewards: torch.Tensor, group_size: int, own_old: torch.Tensor,
                        iw_clip: float | None = 2.0, **_) -> torch.Tensor:
    """The rows whose part of `rapid_loss`'s gradient is exactly zero whatever the policy, decided
    from the rewards alone (before any forward pass): a whole group whose advantages are all 0. [B]
    -> [B] bool.
    - rewards all 0: b_g = mean(w~ * 0) = 0 for any finite w~ (log w is capped), so every A_i = 0;
    - rows whose pi_old is their step's own detached log-probs (`own_old`: the round's first
      mini-batch): log w = logp - logp = 0 exactly, w = 1, so A is the advantage at w~ = min(1, c),
      computed here with the loss's own arithmetic (all-equal rewards give 0 when c >= 1).
    A token term is then -min(rho * 0, clip(rho) * 0) = 0, whose gradient is 0.

    >>> own = torch.tensor([False] * 4 + [True] * 2)
    >>> rapid_zero_gradient(torch.tensor([0., 0., 1., 1., 1., 0.]), 2, own).tolist()
    [True, True, False, False, False, False]
    >>> own = torch.ones(4, dtype=torch.bool)
    >>> rapid_zero_gradient(torch.tensor([1., 1., 1., 0.]), 2, own).tolist()
    [True, True, False, False]
    """
    rewards = rewards.float()
    at_one = torch.full_like(rewards, 1.0 if iw_clip is None else min(1.0, iw_clip))
    settled = (rapid_advantages(rewards, group_size, at_one) == 0) & own_old
    zero = (rewards == 0).view(-1, group_size).all(-1) | settled.view(-1, group_size).all(-1)
    return zero.repeat_interleave(group_size)


@loss_function("seq_mean")
def rapid(batch: LossBatch, *, iw_clip: float | None = 2.0, eps: float | None = 0.2) -> LossOutput:
    """RAPID's off-policy loss, with an importance-weighted group baseline.

    docs/algorithm.md, "The loss of one step": w_i = exp(sum_t m_it (logp - old_logp)) is the
    detached sequence weight of completion i; the group baseline b_g = mean_j min(w_j, c) r_j
    re-weights the group's rewards toward the current policy, and A_i = r_i - b_g drives a
    PPO-clipped token loss averaged per sequence, then over the batch (or divided by
    `batch.denominator`, the row count of the whole mini-batch this batch is a piece of:
    aggregate.py). `batch.token_weights`: the engine correction's detached weight on each token's
    term (engine.py).

    >>> lp = torch.zeros(4, 3)
    >>> out = rapid(LossBatch(lp, lp, torch.ones(4, 3), torch.tensor([1., 0., 1., 1.]), 2))
    >>> metrics = out.metrics
    >>> round(metrics["iw_mean"], 3), round(metrics["adv_mean"], 3), round(out.loss.item(), 3)
    (1.0, 0.0, 0.0)
    """
    logprobs = batch.logprobs
    mask = batch.mask.to(logprobs.dtype)
    log_ratio = masked_log_ratio(logprobs, batch.old_logprobs, mask)  # [B, T], 0 on padding
    seq_log_w = sequence_log_weights(log_ratio)  # [B], detached
    w = seq_log_w.exp()  # [B]
    w_used = w.clamp(max=iw_clip) if iw_clip is not None else w  # [B]
    adv = rapid_advantages(batch.rewards.to(logprobs.dtype), batch.group_size, w_used)  # [B]
    # [B, T]; the ratio carries the gradient
    token_loss, cut = clipped_objective(log_ratio.exp(), adv, eps)
    loss = aggregate(token_loss, mask, rapid.aggregation, batch.denominator,
                     weights=batch.token_weights)

    with torch.no_grad():
        metrics = {
            **ratio_metrics(w, adv, log_ratio, cut, mask),
            "iw_clipped_mean": w_used.mean().item(),
            "iw_clip_frac": (w > iw_clip).float().mean().item() if iw_clip is not None else 0.0,
            # mean |log w~| from the log-weights: log() of a weight that underflowed to 0 is -inf
            "staleness": (seq_log_w.clamp(max=math.log(iw_clip)) if iw_clip is not None
                          else seq_log_w).abs().mean().item(),
        }
    return LossOutput(loss, metrics)


def rapid_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, mask: torch.Tensor,
               rewards: torch.Tensor, group_size: int, iw_clip: float | None = 2.0,
               eps: float | None = 0.2, denominator: float | None = None,
               token_weights: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """`rapid` on plain tensors (the shapes of `LossBatch`): (scalar loss, metrics)."""
    tensors = (logprobs, old_logprobs, mask, rewards)
    return on_tensors(rapid, *tensors, group_size, denominator=denominator,
                      token_weights=token_weights, iw_clip=iw_clip, eps=eps)
