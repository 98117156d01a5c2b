"""Policy-gradient losses as pure functions: tensors in, (scalar loss, metrics dict) out.

Shapes: logprobs, old_logprobs, mask: [B, T] (mask 1 on completion tokens, 0 on padding);
rewards: [B]; rows are grouped, B = n_groups * group_size, group g = rows g*G .. g*G+G-1.
"""

from __future__ import annotations

import math

import torch

from rapid_cli.algorithms.aggregate import aggregate, aggregated
from rapid_cli.algorithms.primitives import (
    clipped_objective,
    masked_log_ratio,
    ratio_metrics,
    sequence_log_weights,
)


@aggregated("seq_mean")
def rapid_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    mask: torch.Tensor,
    rewards: torch.Tensor,
    group_size: int,
    iw_clip: float | None = 2.0,
    eps: float | None = 0.2,
    denominator: float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """RAPID's off-policy loss with an importance-weighted group baseline (docs/algorithm.md, "The loss of one step").

    w_i = exp(sum_t m_it (logp - old_logp)) is the detached sequence weight of completion i; the group
    baseline b_g = mean_j min(w_j, c) r_j re-weights the group's rewards toward the current policy, and
    A_i = r_i - b_g drives a PPO-clipped token loss averaged per sequence, then over the batch (or divided
    by `denominator`, the row count of the whole mini-batch this batch is a piece of: algorithms/aggregate.py).

    >>> B, T = 4, 3
    >>> lp = torch.zeros(B, T); m = torch.ones(B, T); r = torch.tensor([1., 0., 1., 1.])
    >>> loss, met = rapid_loss(lp, lp, m, r, group_size=2)  # on-policy: w = 1, b = group means
    >>> round(met["iw_mean"], 3), round(met["adv_mean"], 3), round(loss.item(), 3)
    (1.0, 0.0, 0.0)
    """
    B = logprobs.shape[0]
    if B % group_size:
        raise ValueError(f"batch of {B} rows is not a whole number of groups of {group_size}")
    mask = mask.to(logprobs.dtype)
    log_ratio = masked_log_ratio(logprobs, old_logprobs, mask)  # [B, T], 0 on padding
    seq_log_w = sequence_log_weights(log_ratio)  # [B], detached
    w = seq_log_w.exp()  # [B]
    w_used = w.clamp(max=iw_clip) if iw_clip is not None else w  # [B]
    r = rewards.to(logprobs.dtype).view(-1, group_size)  # [n_groups, G]
    baseline = (w_used.view(-1, group_size) * r).mean(-1, keepdim=True)  # [n_groups, 1]
    adv = (r - baseline).view(-1)  # [B], no std normalisation
    token_loss, cut = clipped_objective(log_ratio.exp(), adv, eps)  # [B, T]; the ratio carries the gradient
    loss = aggregate(token_loss, mask, rapid_loss.aggregation, denominator)

    with torch.no_grad():
        metrics = {
            **ratio_metrics(w, adv, log_ratio, cut, mask),
            "iw_clipped_mean": w_used.mean().item(),
            "iw_clip_frac": (w > iw_clip).float().mean().item() if iw_clip is not None else 0.0,
            # mean |log w~| from the log-weights: log() of a weight that underflowed to 0 would be -inf
            "staleness": (seq_log_w.clamp(max=math.log(iw_clip)) if iw_clip is not None else seq_log_w).abs().mean().item(),
        }
    return loss, metrics
