"""Algorithms, registered by name as explicit records; `algo.name` picks one.

A record names its loss, the `algo` config fields that loss takes as options, whether it can use a
frozen reference policy's log-probs (a KL penalty) and whether it is an on-policy method. Adding an
algorithm is one loss (a pure function marked with `contract.loss_function`, or a
`baselines.PolicyGradientSpec`, built from primitives.py and aggregate.py) and one `register` call
here; the learner and the config check read everything else from the record.

Next to its loss a record declares its zero-gradient rule: which rows' part of the gradient is
exactly zero whatever the policy, decided from the rewards before any forward pass (rows whose
pi_old is their step's own log-probs, where w = 1 exactly, may say more). With
`algo.skip_zero_advantage` the learner leaves those rows out of every pass and the step's gradient
stays the same (learner.Learner.moving_rows).

A loss takes a `contract.LossBatch` and its options and returns a `contract.LossOutput` (the loss
and its metrics, each declared in `contract.METRICS` with how it combines); `Algorithm.loss` calls
it on plain tensors. The batch's `denominator` is the whole mini-batch's (`Algorithm.denominator`,
computed from the rollouts before any forward pass), so cutting the mini-batch into micro-batches or
ranks does not change the gradient.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from rapid_cli.algorithms.aggregate import denominator, informative_rows
from rapid_cli.algorithms.baselines import DAPO, DR_GRPO, GRPO
from rapid_cli.algorithms.contract import Loss, LossBatch, LossOutput, on_tensors
from rapid_cli.algorithms.losses import rapid, rapid_zero_gradient
from rapid_cli.errors import RapidError

if TYPE_CHECKING:  # the config's types only: importing it would load Hydra with every loss
    from rapid_cli.config import AlgoConfig


@dataclass(frozen=True)
class Algorithm:
    name: str
    objective: Loss  # the loss of a LossBatch (contract.Loss); `loss` calls it on plain tensors
    options: tuple[str, ...]  # the algo config fields the loss takes as keyword options
    # (rewards [B], group_size, own_old [B] bool, **options) -> [B] bool, rows whose gradient is 0
    zero_gradient: Callable
    reference: bool = False  # the loss reads `batch.ref_logprobs` (a KL penalty, algo.kl_beta)
    on_policy: bool = False  # made for one step per generation (its preset: steps_per_generation=1)

    @property
    def aggregation(self) -> str:
        return self.objective.aggregation

    def compute(self, batch: LossBatch, options: dict) -> LossOutput:
        """The loss of `batch` with `options` (`loss_options`)."""
        return self.objective(batch, **options)

    def loss(self, logprobs: torch.Tensor, old_logprobs: torch.Tensor, mask: torch.Tensor,
             rewards: torch.Tensor, group_size: int, **options_and_inputs
             ) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss on plain tensors (contract.on_tensors): (scalar loss, metrics). The keywords are
        its options and LossBatch's optional fields (ref_logprobs, denominator, token_weights)."""
        tensors = (logprobs, old_logprobs, mask, rewards)
        return on_tensors(self.objective, *tensors, group_size, **options_and_inputs)

    def loss_options(self, algo_cfg: AlgoConfig) -> dict:
        """The values of this loss's options in the `algo` config."""
        return {k: algo_cfg[k] for k in self.options}

    def needs_reference(self, algo_cfg: AlgoConfig) -> bool:
        """Whether this config needs a frozen copy of the initial policy (its KL term is on)."""
        return self.reference and bool(algo_cfg.kl_beta)

    def zero_gradient_rows(self, rewards: torch.Tensor, group_size: int, options: dict,
                           own_old: torch.Tensor) -> torch.Tensor:
        """Rows (whole groups) whose part of this loss's gradient is exactly zero. rewards [B]
        float, `own_old` [B] bool (rows whose pi_old is their step's own log-probs) -> [B] bool."""
        return self.zero_gradient(rewards, group_size, own_old, **options)

    def denominator(self, mask: torch.Tensor, rewards: torch.Tensor, group_size: int,
                    options: dict) -> float:
        """What the loss divides its summed terms by, for a whole mini-batch with completion `mask`
        [B, T] and `rewards` [B] (algorithms/aggregate.py)."""
        return denominator(self.aggregation, mask, rewards, group_size,
                           norm_len=options.get("norm_len"),
                           drop_equal_groups=options.get("drop_equal_groups", False))

    def batch_metrics(self, rewards: torch.Tensor, group_size: int,
                      options: dict) -> dict[str, float]:
        """The metrics of a whole mini-batch with `rewards` [B], every row counted whether it is
        computed or not: the fraction of groups dropped for equal rewards (DAPO's filter; those rows
        are never computed, so the loss's own figure would cover the kept ones only)."""
        if not options.get("drop_equal_groups"):
            return {}
        kept = informative_rows(rewards, group_size).float().mean().item()
        return {"groups_dropped_frac": 1 - kept}


ALGORITHMS: dict[str, Algorithm] = {}


def register(algorithm: Algorithm) -> Algorithm:
    if algorithm.name in ALGORITHMS:
        raise ValueError(f"algorithm {algorithm.name!r} is registered twice")
    ALGORITHMS[algorithm.name] = algorithm
    return algorithm


register(Algorithm("rapid", rapid, ("iw_clip", "eps"), rapid_zero_gradient))
register(Algorithm("grpo", GRPO, ("eps", "kl_beta"), GRPO.zero_gradient,
                   reference=True, on_policy=True))
# pg is GRPO's loss with its preset's kl_beta = 0 (conf/algo/pg.yaml)
register(Algorithm("pg", GRPO, ("eps", "kl_beta"), GRPO.zero_gradient,
                   reference=True, on_policy=True))
register(Algorithm("dapo", DAPO, ("eps", "eps_high", "drop_equal_groups"), DAPO.zero_gradient,
                   on_policy=True))
register(Algorithm("dr_grpo", DR_GRPO, ("eps", "norm_len"), DR_GRPO.zero_gradient,
                   on_policy=True))


def get(name: str) -> Algorithm:
    """The record registered as `name`; an unknown name is the user's mistake, named in one line."""
    if name not in ALGORITHMS:
        choices = ", ".join(sorted(ALGORITHMS))
        raise RapidError(f"algo.name={name!r} is unknown; choose one of {choices}")
    return ALGORITHMS[name]


def check(algo_cfg: AlgoConfig) -> None:
    """`algo.name` is registered, and the options set are ones its loss uses."""
    algorithm = get(algo_cfg.name)
    if algo_cfg.kl_beta and not algorithm.reference:
        raise RapidError(f"algo.kl_beta={algo_cfg.kl_beta} has no effect with "
                         f"algo.name={algo_cfg.name}; use algo=grpo, or set it to 0")
