"""Algorithms are loss functions registered by name; `algo.name` picks one.

A loss takes (logprobs, old_logprobs, mask, rewards, group_size, **options) with the shapes documented
in `losses` and returns (loss, metrics). The trainer passes the `algo` config fields named by the function's
parameters that have defaults, so a new algorithm is a new function here, not a branch in the loop.
"""

from __future__ import annotations

import inspect

from rapid_cli.algorithms.losses import rapid_loss

LOSSES = {"rapid": rapid_loss}


def loss_options(fn, algo_cfg) -> dict:
    """The algo config fields that `fn` takes as options (its parameters with defaults)."""
    params = inspect.signature(fn).parameters.values()
    return {p.name: algo_cfg[p.name] for p in params if p.default is not p.empty and p.name in algo_cfg}
