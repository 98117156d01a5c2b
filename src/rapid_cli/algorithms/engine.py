"""The behaviour correction for the inference engine (algo.engine_correction; docs/algorithm.md,
"The engine correction"): the samples come from the engine's distribution mu, every loss treats them
as drawn from the trainer's pi_old, and in bf16 the two differ (up to ~0.7 nats per sequence on this
project's CPU).

- `tis`: truncated importance sampling per token, weight min(pi_old / mu, C) on each token's loss
  term (Yao et al.'s TIS, verl's token-level truncate, TRL's token_truncate);
- `mis`: a mask per sequence, weight 1 where the sequence ratio pi_old / mu lies in [1/C, C], else 0
  (verl's sequence-level mask, TRL's sequence_mask);
- `none`: weight 1.

The weights are detached: they re-weight which samples count, they carry no gradient. Where pi_old
is mu itself (algo.old_logprobs=sampler, or a trusted sampler's rows) the ratio is exp(0) = 1: no
correction.
"""

from __future__ import annotations

import torch

from rapid_cli.algorithms.primitives import MAX_LOG_W

MODES = ("none", "tis", "mis")


def engine_weights(old: torch.Tensor, mu: torch.Tensor, mask: torch.Tensor, mode: str, cap: float
                   ) -> tuple[torch.Tensor, dict[str, float]]:
    """Per-token weights [B, T] (0 on padding) for log pi_old `old`, the engine's log mu `mu` and
    the completion `mask`, all [B, T]; and their statistics (over tokens of `mask`): the mean
    weight, the largest ratio before truncation, the truncated fraction of tokens (tis), the masked
    fraction of rows (mis).

    >>> old = torch.tensor([[0.1, 1.0, -0.5], [0.5, 0.5, 0.0]]); mu = torch.zeros(2, 3)
    >>> m = torch.tensor([[1., 1., 1.], [1., 1., 0.]])
    >>> [round(x, 4) for x in engine_weights(old, mu, m, "tis", 2.0)[0][0].tolist()]
    [1.1052, 2.0, 0.6065]
    >>> # log ratios 0.6 (e^0.6 = 1.82: kept), 1.0 (2.72: not)
    >>> engine_weights(old, mu, m, "mis", 2.0)[0].tolist()
    [[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]
    """
    if mode not in MODES:
        raise ValueError(f"unknown engine correction {mode!r}; one of {MODES}")
    zero = torch.zeros_like(mask, dtype=torch.float32)
    log_ratio = torch.where(mask > 0, old.float() - mu.float(), zero)
    n_tok = mask.sum().clamp(min=1)
    tokens = log_ratio[mask > 0]  # padding's 0 would report a ratio of 1 that no token has
    stats = {"engine_ratio_max": (tokens.clamp(max=MAX_LOG_W).exp().max().item()
                                  if tokens.numel() else 1.0),
             "engine_truncated_frac": 0.0, "engine_masked_frac": 0.0}
    if mode == "tis":
        ratio = log_ratio.clamp(max=MAX_LOG_W).exp()
        weights = ratio.clamp(max=cap)
        stats["engine_truncated_frac"] = (((ratio > cap) & (mask > 0)).float().sum() / n_tok).item()
    elif mode == "mis":
        seq = log_ratio.sum(-1)  # [B]
        bound = torch.log(torch.tensor(cap))
        kept = (seq >= -bound) & (seq <= bound)
        weights = kept.float()[:, None].expand_as(log_ratio)
        stats["engine_masked_frac"] = 1 - kept.float().mean().item()
    else:
        weights = torch.ones_like(log_ratio)
    weights = torch.where(mask > 0, weights, torch.zeros_like(weights))
    stats["engine_weight_mean"] = (weights.sum() / n_tok).item()
    return weights, stats
