"""The baselines RAPID is compared with (docs/algorithm.md, "The baselines"), as pure losses with the same contract
as `rapid_loss`, built from the pieces in primitives.py (log-ratio, clip, weights, diagnostics) and these:

- advantages: group z-score (GRPO, PG, DAPO) or group-centred only (Dr. GRPO);
- the PPO-clipped token objective, with an optional higher upper clip (DAPO's clip-higher);
- aggregation: mean per sequence then over the batch (GRPO, PG), one token-level mean over the whole
  batch (DAPO), or a token sum over a constant length (Dr. GRPO);
- an optional k3 KL penalty to a frozen reference policy (GRPO, beta = 0.04);
- an optional mask dropping groups whose rewards are all equal (DAPO's dynamic-sampling filter; here
  those groups are dropped, not refilled by extra sampling).

They are on-policy methods: their presets take one optimizer step per generation round
(`algo.steps_per_generation=1`), where the ratio is 1 and the clip only matters for its gradient form.
"""

from __future__ import annotations

import torch

from rapid_cli.algorithms.aggregate import aggregate as aggregate_loss
from rapid_cli.algorithms.aggregate import aggregated, informative_rows
from rapid_cli.algorithms.primitives import (
    clipped_objective,
    masked_log_ratio,
    ratio_metrics,
    sequence_log_weights,
)


def group_advantages(rewards: torch.Tensor, group_size: int, scale: bool) -> torch.Tensor:
    """r - group mean, divided by (group std + 1e-4) when `scale` (GRPO's z-score). [B] -> [B]

    >>> group_advantages(torch.tensor([1., 0., 1., 1.]), 2, scale=False).tolist()
    [0.5, -0.5, 0.0, 0.0]
    """
    r = rewards.view(-1, group_size)
    adv = r - r.mean(-1, keepdim=True)
    if scale:
        adv = adv / (r.std(-1, keepdim=True) + 1e-4)
    return adv.view(-1)


def zero_gradient(rewards: torch.Tensor, group_size: int, own_old: torch.Tensor, *, scale: bool,
                  kl_beta: float = 0.0, drop_equal_groups: bool = False, **_) -> torch.Tensor:
    """The rows whose part of the gradient is exactly zero whatever the policy: whole groups whose
    advantages (which depend on the rewards alone) are all 0, or that DAPO's filter drops. A KL term has a
    gradient of its own everywhere, so with kl_beta > 0 no row is. [B] -> [B] bool; `own_old` is unused
    (the advantages do not depend on the importance weights).

    >>> zero_gradient(torch.tensor([1., 1., 0., 1., 0., 0.]), 2, None, scale=True).tolist()
    [True, True, False, False, True, True]
    >>> zero_gradient(torch.tensor([1., 1., 0., 1.]), 2, None, scale=True, kl_beta=0.04).tolist()
    [False, False, False, False]
    """
    if kl_beta:
        return torch.zeros(rewards.shape, dtype=torch.bool)
    r = rewards.float()
    zero = group_advantages(r, group_size, scale) == 0
    if drop_equal_groups:
        zero |= ~informative_rows(r, group_size)
    return zero.view(-1, group_size).all(-1).repeat_interleave(group_size)


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Schulman's k3 estimator of KL(pi_theta || pi_ref) per token: exp(d) - d - 1, d = ref - logp (>= 0);
    0 where `mask` is 0. The mask goes in before exp(): at padding the reference log-prob is a 0 placeholder
    while the policy's log-prob of the pad target can be below -88, where exp overflows and inf * 0 is NaN."""
    d = ref_logprobs - logprobs
    if mask is not None:
        d = torch.where(mask > 0, d, torch.zeros_like(d))
    return d.exp() - d - 1


def _policy_gradient(logprobs, old_logprobs, mask, rewards, group_size, *, scale: bool, eps: float,
                     eps_high: float | None, aggregate: str, kl_beta: float, ref_logprobs, drop_equal_groups: bool,
                     norm_len: int | None = None, denominator: float | None = None,
                     token_weights: torch.Tensor | None = None):
    B = logprobs.shape[0]
    if B % group_size:
        raise ValueError(f"batch of {B} rows is not a whole number of groups of {group_size}")
    mask = mask.to(logprobs.dtype)
    r = rewards.to(logprobs.dtype)
    informative = informative_rows(r, group_size)  # [B]
    keep = informative if drop_equal_groups else None
    adv = group_advantages(r, group_size, scale)
    log_ratio = masked_log_ratio(logprobs, old_logprobs, mask)
    token_loss, cut = clipped_objective(log_ratio.exp(), adv, eps, eps_high)
    kl = None
    if kl_beta:
        if ref_logprobs is None:
            raise ValueError("kl_beta > 0 needs ref_logprobs from the reference model")
        kl = kl_k3(logprobs, ref_logprobs, mask)
        token_loss = token_loss + kl_beta * kl
    loss = aggregate_loss(token_loss, mask, aggregate, denominator, keep, norm_len, weights=token_weights)
    if keep is not None:
        mask = mask * keep[:, None].to(mask.dtype)  # the metrics below describe the kept tokens only
    with torch.no_grad():
        metrics = ratio_metrics(sequence_log_weights(log_ratio).exp(), adv, log_ratio, cut, mask)
        metrics["groups_dropped_frac"] = (1 - informative.float().mean()).item() if drop_equal_groups else 0.0
        if kl is not None:
            metrics["kl"] = ((kl.detach() * mask).sum() / mask.sum().clamp(min=1)).item()
    return loss, metrics


@aggregated("seq_mean")
def grpo_loss(logprobs, old_logprobs, mask, rewards, group_size, eps: float | None = 0.2, kl_beta: float = 0.04,
              ref_logprobs=None, denominator: float | None = None, token_weights=None):
    """GRPO: z-scored group advantages, PPO clip, k3 KL to the reference (beta), per-sequence token mean.
    With kl_beta = 0 this is the paper's PG baseline."""
    return _policy_gradient(logprobs, old_logprobs, mask, rewards, group_size, scale=True, eps=eps, eps_high=None,
                            aggregate=grpo_loss.aggregation, kl_beta=kl_beta, ref_logprobs=ref_logprobs,
                            drop_equal_groups=False, denominator=denominator, token_weights=token_weights)


@aggregated("token_mean")
def dapo_loss(logprobs, old_logprobs, mask, rewards, group_size, eps: float | None = 0.2, eps_high: float | None = 0.28,
              drop_equal_groups: bool = True, denominator: float | None = None, token_weights=None):
    """DAPO: one token-level mean over the batch, clip-higher (eps_high), groups with equal rewards dropped, no KL."""
    return _policy_gradient(logprobs, old_logprobs, mask, rewards, group_size, scale=True, eps=eps,
                            eps_high=eps_high, aggregate=dapo_loss.aggregation, kl_beta=0.0, ref_logprobs=None,
                            drop_equal_groups=drop_equal_groups, denominator=denominator,
                            token_weights=token_weights)


@aggregated("token_sum")
def dr_grpo_loss(logprobs, old_logprobs, mask, rewards, group_size, eps: float | None = 0.2,
                 norm_len: int | None = None, denominator: float | None = None, token_weights=None):
    """Dr. GRPO: group-centred advantages without std scaling, token sum over a constant length (norm_len,
    the generation budget), so neither long nor short answers are favoured by the normalisation."""
    return _policy_gradient(logprobs, old_logprobs, mask, rewards, group_size, scale=False, eps=eps, eps_high=None,
                            aggregate=dr_grpo_loss.aggregation, kl_beta=0.0, ref_logprobs=None,
                            drop_equal_groups=False, norm_len=norm_len, denominator=denominator,
                            token_weights=token_weights)

