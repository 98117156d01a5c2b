"""Algorithms are loss functions registered by name; `algo.name` picks one.

A loss takes (logprobs, old_logprobs, mask, rewards, group_size, **options, denominator=None) with the
shapes documented in `losses` and returns (loss, metrics). The trainer passes the `algo` config fields
named by the function's parameters that have defaults, and the mini-batch's `denominator` (computed by
`loss_denominator` from the rollouts before any forward pass, so micro-batching does not change the
gradient; algorithms/aggregate.py), so a new algorithm is a new function here, not a branch in the loop.
"""

from __future__ import annotations

import inspect

import torch

from rapid_cli.algorithms.aggregate import denominator
from rapid_cli.algorithms.baselines import dapo_loss, dr_grpo_loss, grpo_loss
from rapid_cli.algorithms.losses import rapid_loss
from rapid_cli.errors import RapidError

# pg is GRPO's loss with its preset's kl_beta = 0 (conf/algo/pg.yaml).
LOSSES = {"rapid": rapid_loss, "grpo": grpo_loss, "pg": grpo_loss, "dapo": dapo_loss, "dr_grpo": dr_grpo_loss}


def check(algo_cfg) -> None:
    """`algo.name` is registered, and its options are ones that loss takes."""
    if algo_cfg.name not in LOSSES:
        raise RapidError(f"algo.name={algo_cfg.name!r} is unknown; choose one of {', '.join(sorted(LOSSES))}")
    if algo_cfg.kl_beta and "ref_logprobs" not in inspect.signature(LOSSES[algo_cfg.name]).parameters:
        raise RapidError(f"algo.kl_beta={algo_cfg.kl_beta} has no effect with algo.name={algo_cfg.name}; use algo=grpo, "
                         "or set it to 0")


def loss_options(fn, algo_cfg) -> dict:
    """The algo config fields that `fn` takes as options (its parameters with defaults)."""
    params = inspect.signature(fn).parameters.values()
    return {p.name: algo_cfg[p.name] for p in params if p.default is not p.empty and p.name in algo_cfg}


def needs_reference(fn, algo_cfg) -> bool:
    """Whether the loss wants log-probs of the frozen reference model (a KL penalty is on)."""
    return "ref_logprobs" in inspect.signature(fn).parameters and bool(algo_cfg.get("kl_beta"))


def loss_denominator(fn, mask: torch.Tensor, rewards: torch.Tensor, group_size: int, options: dict) -> float:
    """What `fn` divides its summed terms by, for the whole batch with completion `mask` [B, T] and `rewards` [B]."""
    return denominator(fn.aggregation, mask, rewards, group_size, drop_equal_groups=options.get("drop_equal_groups", False),
                       norm_len=options.get("norm_len"))
