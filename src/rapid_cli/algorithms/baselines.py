"""The baselines RAPID is compared with (docs/algorithm.md, "The baselines"): one policy-gradient
loss with the contract of every loss (algorithms/contract.py), each baseline a `PolicyGradientSpec`
of the choices it makes, built from the pieces in primitives.py (log-ratio, clip, weights,
diagnostics) and these:

- advantages: group z-score (GRPO, PG, DAPO) or group-centred only (Dr. GRPO);
- the PPO-clipped token objective, with an optional higher upper clip (DAPO's clip-higher);
- aggregation: mean per sequence then over the batch (GRPO, PG), one token-level mean over the whole
  batch (DAPO), or a token sum over a constant length (Dr. GRPO);
- an optional k3 KL penalty to a frozen reference policy (GRPO, beta = 0.04);
- an optional mask dropping groups whose rewards are all equal (DAPO's dynamic-sampling filter; here
  those groups are dropped, not refilled by extra sampling).

They are on-policy methods: their presets take one optimizer step per generation round
(`algo.steps_per_generation=1`), where the ratio is 1 and the clip only matters for its
gradient form.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rapid_cli.algorithms.aggregate import aggregate as aggregate_loss
from rapid_cli.algorithms.aggregate import informative_rows
from rapid_cli.algorithms.contract import LossBatch, LossOutput
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
    groups = rewards.view(-1, group_size)
    adv = groups - groups.mean(-1, keepdim=True)
    if scale:
        adv = adv / (groups.std(-1, keepdim=True) + 1e-4)
    return adv.view(-1)


def zero_gradient(rewards: torch.Tensor, group_size: int, own_old: torch.Tensor, *, scale: bool,
                  kl_beta: float = 0.0, drop_equal_groups: bool = False, **_) -> torch.Tensor:
    """The rows whose part of the gradient is exactly zero whatever the policy: whole groups whose
    advantages (which depend on the rewards alone) are all 0, or that DAPO's filter drops. A KL term
    has a gradient of its own everywhere, so with kl_beta > 0 no row is. [B] -> [B] bool; `own_old`
    is unused (the advantages do not depend on the importance weights).

    >>> zero_gradient(torch.tensor([1., 1., 0., 1., 0., 0.]), 2, None, scale=True).tolist()
    [True, True, False, False, True, True]
    >>> zero_gradient(torch.tensor([1., 1., 0., 1.]), 2, None, scale=True, kl_beta=0.04).tolist()
    [False, False, False, False]
    """
    if kl_beta:
        return torch.zeros(rewards.shape, dtype=torch.bool)
    rewards = rewards.float()
    zero = group_advantages(rewards, group_size, scale) == 0
    if drop_equal_groups:
        zero |= ~informative_rows(rewards, group_size)
    return zero.view(-1, group_size).all(-1).repeat_interleave(group_size)


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
          mask: torch.Tensor | None = None) -> torch.Tensor:
    """Schulman's k3 estimator of KL(pi_theta || pi_ref) per token: exp(d) - d - 1 (>= 0), with
    d = ref - logp; 0 where `mask` is 0. The mask goes in before exp(): at padding the reference
    log-prob is a 0 placeholder while the policy's log-prob of the pad target can be below -88,
    where exp overflows and inf * 0 is NaN."""
    d = ref_logprobs - logprobs
    if mask is not None:
        d = torch.where(mask > 0, d, torch.zeros_like(d))
    return d.exp() - d - 1


@dataclass(frozen=True)
class PolicyGradientSpec:
    """One policy-gradient loss, as the choices the baselines differ in. It is called
    `spec(batch, **options)` (algorithms/contract.py); its options are the `algo` config fields
    its choices read (`options`).

    >>> DAPO.options
    {'eps': 0.2, 'eps_high': 0.28, 'drop_equal_groups': True}
    """

    aggregation: str  # aggregate.AGGREGATIONS; token_sum divides by a length, option `norm_len`
    scale_advantages: bool = True  # z-scored group advantages (GRPO, PG, DAPO), else centred only
    clip_higher: bool = False  # an upper clip of its own, option `eps_high` (DAPO); else `eps`
    kl: bool = False  # a k3 KL penalty to the reference policy, weighted by option `kl_beta` (GRPO)
    drop_equal_groups: bool = False  # groups of equal rewards may be dropped, by the option (DAPO)

    @property
    def options(self) -> dict[str, object]:
        """The algo config fields this loss takes, with the values it uses when not given them."""
        options: dict[str, object] = {"eps": 0.2}
        if self.clip_higher:
            options["eps_high"] = 0.28
        if self.kl:
            options["kl_beta"] = 0.04
        if self.drop_equal_groups:
            options["drop_equal_groups"] = True
        if self.aggregation == "token_sum":
            options["norm_len"] = None  # the padded width; the presets set the generation budget
        return options

    @property
    def reference(self) -> bool:
        return self.kl

    def __call__(self, batch: LossBatch, **options) -> LossOutput:
        """The loss of `batch` with `options` (some of `self.options`)."""
        chosen = self._chosen(options)
        dtype = batch.logprobs.dtype
        mask = batch.mask.to(dtype)
        informative = informative_rows(batch.rewards.to(dtype), batch.group_size)  # [B]
        keep = informative if chosen["drop_equal_groups"] else None
        eps, eps_high = chosen["eps"], chosen["eps_high"]
        token_loss, log_ratio, adv, cut = self._token_terms(batch, mask, eps, eps_high)
        kl = self._kl(batch, mask, chosen["kl_beta"])
        if kl is not None:
            token_loss = token_loss + chosen["kl_beta"] * kl
        loss = aggregate_loss(token_loss, mask, self.aggregation, batch.denominator, keep,
                              chosen["norm_len"], weights=batch.token_weights)
        if keep is not None:
            mask = mask * keep[:, None].to(mask.dtype)  # the metrics below describe the kept tokens
        with torch.no_grad():
            weights = sequence_log_weights(log_ratio).exp()
            metrics = ratio_metrics(weights, adv, log_ratio, cut, mask)
            dropped = (1 - informative.float().mean()).item() if keep is not None else 0.0
            metrics["groups_dropped_frac"] = dropped
            if kl is not None:
                metrics["kl"] = ((kl.detach() * mask).sum() / mask.sum().clamp(min=1)).item()
        return LossOutput(loss, metrics)

    def _chosen(self, options: dict) -> dict:
        """Every option the loss reads: `options`, this spec's defaults for the others it takes, and
        the values that leave out what it does not do."""
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise TypeError(f"this loss takes no option {', '.join(unknown)}; "
                            f"it takes {', '.join(self.options)}")
        left_out = {"eps_high": None, "kl_beta": 0.0, "drop_equal_groups": False, "norm_len": None}
        return {**left_out, **self.options, **options}

    def _token_terms(self, batch: LossBatch, mask: torch.Tensor, eps: float | None,
                     eps_high: float | None):
        """The clipped token objective [B, T] with its masked log-ratio [B, T], the advantages [B]
        and the tokens the clip cut [B, T]."""
        rewards = batch.rewards.to(batch.logprobs.dtype)
        adv = group_advantages(rewards, batch.group_size, self.scale_advantages)
        log_ratio = masked_log_ratio(batch.logprobs, batch.old_logprobs, mask)
        token_loss, cut = clipped_objective(log_ratio.exp(), adv, eps, eps_high)
        return token_loss, log_ratio, adv, cut

    @staticmethod
    def _kl(batch: LossBatch, mask: torch.Tensor, kl_beta: float) -> torch.Tensor | None:
        """The k3 KL to the reference per token [B, T], when the KL term is on (kl_beta != 0)."""
        if not kl_beta:
            return None
        if batch.ref_logprobs is None:
            raise ValueError("kl_beta > 0 needs ref_logprobs from the reference model")
        return kl_k3(batch.logprobs, batch.ref_logprobs, mask)

    def zero_gradient(self, rewards: torch.Tensor, group_size: int, own_old: torch.Tensor,
                      **options) -> torch.Tensor:
        """This loss's zero-gradient rule (`zero_gradient`, with its own advantages).
        [B] -> [B] bool"""
        return zero_gradient(rewards, group_size, own_old, scale=self.scale_advantages, **options)


# GRPO: z-scored group advantages, PPO clip, k3 KL to the reference (kl_beta), per-sequence token
# mean. With kl_beta = 0 it is the paper's PG baseline.
GRPO = PolicyGradientSpec("seq_mean", kl=True)
# DAPO: one token-level mean over the batch, clip-higher (eps_high), groups with equal rewards
# dropped, no KL.
DAPO = PolicyGradientSpec("token_mean", clip_higher=True, drop_equal_groups=True)
# Dr. GRPO: group-centred advantages without std scaling, token sum over a constant length
# (norm_len, the generation budget), so neither long nor short answers are favoured by the
# normalisation.
DR_GRPO = PolicyGradientSpec("token_sum", scale_advantages=False)
