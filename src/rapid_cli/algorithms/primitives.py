"""The pieces every policy-gradient loss here is built from, written once: the masked per-token
log-ratio, the detached sequence importance weight (capped in log space), the PPO-clipped token
objective and the diagnostics every loss reports. Shapes: [B, T] per token (mask 1 on completion
tokens), [B] per sequence."""

from __future__ import annotations

import math

import torch

from rapid_cli.algorithms.aggregate import weight_sums

# exp() of a sequence log-ratio overflows float32 past ~88; weights are clipped long before that.
MAX_LOG_W = 60.0


def masked_log_ratio(logprobs: torch.Tensor, old_logprobs: torch.Tensor,
                     mask: torch.Tensor) -> torch.Tensor:
    """log pi_theta - log pi_old per token, 0 on padding. [B, T] -> [B, T], with gradient. where(),
    not a product: padding may hold -inf or junk, and inf * 0 is NaN (forward and backward)."""
    return torch.where(mask > 0, logprobs - old_logprobs, torch.zeros_like(logprobs))


def sequence_log_weights(log_ratio: torch.Tensor) -> torch.Tensor:
    """log w_i = sum_t of a sequence's masked log-ratio, detached and capped at MAX_LOG_W.
    [B, T] -> [B]"""
    return log_ratio.detach().sum(-1).clamp(max=MAX_LOG_W)


def clipped_objective(ratio: torch.Tensor, adv: torch.Tensor, eps: float | None,
                      eps_high: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """-min(rho A, clip(rho, 1-eps, 1+eps_high) A) per token, and which tokens the clip cut off
    (bool). ratio [B, T], adv [B] -> ([B, T], [B, T]). eps=None: no lower clip; eps_high=None: the
    upper clip is eps too; neither: the plain surrogate -rho A.

    >>> loss, cut = clipped_objective(torch.tensor([[1.5, 0.5]]), torch.tensor([1.0]), eps=0.2)
    >>> loss.tolist(), cut.tolist()
    ([[-1.2000000476837158, -0.5]], [[True, False]])
    """
    surrogate = ratio * adv[:, None]
    upper = eps_high if eps_high is not None else eps
    if eps is None and upper is None:
        return -surrogate, torch.zeros_like(surrogate, dtype=torch.bool)
    low, high = -math.inf if eps is None else 1 - eps, math.inf if upper is None else 1 + upper
    clipped = ratio.clamp(low, high) * adv[:, None]
    return -torch.minimum(surrogate, clipped), clipped < surrogate


@torch.no_grad()
def ratio_metrics(w: torch.Tensor, adv: torch.Tensor, log_ratio: torch.Tensor, cut: torch.Tensor,
                  mask: torch.Tensor) -> dict[str, float]:
    """The diagnostics every loss reports: sequence weights w [B] (before any clip), advantages [B],
    the masked log-ratio and the clip's cut tokens [B, T], over the tokens of `mask` [B, T]. How
    each combines and is logged: contract.METRICS."""
    n_tok = mask.sum().clamp(min=1)
    return {
        "iw_mean": w.mean().item(),
        "iw_max": w.max().item(),
        **weight_sums(w),
        "ppo_clip_frac": ((cut.to(mask.dtype) * mask).sum() / n_tok).item(),
        "adv_mean": adv.mean().item(),
        "adv_abs_mean": adv.abs().mean().item(),
        "log_ratio_abs_mean": ((log_ratio.detach().abs() * mask).sum() / n_tok).item(),
    }
