"""How a loss turns its per-token terms into one number: per-row terms summed, over a denominator.

The trainer cuts a mini-batch into micro-batches (`algo.micro_batch_size`) and, with torchrun,
spreads it over ranks. A mean taken inside each piece would weight the pieces wrongly (a micro-batch
of short completions, or one whose groups DAPO dropped, would count as much as any other), so the
denominator is computed once for the whole mini-batch from the rollouts (`denominator`, before any
forward pass) and passed into every piece's loss: the accumulated gradient is then the same however
the batch is cut.

Aggregations, with each row's part of the denominator:
- `seq_mean`: each row's token mean, averaged over rows (RAPID, GRPO, PG): 1 per row;
- `token_mean`: one token mean over the batch (DAPO): the row's kept tokens;
- `token_sum`: token sum over a constant length (Dr. GRPO): `norm_len` per row.
"""

from __future__ import annotations

import torch

AGGREGATIONS = ("seq_mean", "token_mean", "token_sum")


def informative_rows(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """True for rows of groups whose rewards are not all equal. [B] -> [B] bool

    >>> informative_rows(torch.tensor([1., 0., 1., 1.]), 2).tolist()
    [True, True, False, False]
    """
    groups = rewards.view(-1, group_size)
    return (groups.max(-1).values > groups.min(-1).values).repeat_interleave(group_size)


def row_weights(how: str, mask: torch.Tensor, keep: torch.Tensor | None = None,
                norm_len: int | None = None) -> torch.Tensor:
    """Each row's part of the denominator. mask [B, T], keep [B] bool (None: all rows) -> [B]"""
    kept = mask.sum(-1) if keep is None else mask.sum(-1) * keep.to(mask.dtype)
    if how == "seq_mean":
        return torch.ones_like(kept)
    if how == "token_mean":
        return kept
    if how == "token_sum":
        # norm_len=None: the padded width; the presets set it (Dr. GRPO: the generation budget)
        return torch.full_like(kept, float(norm_len or mask.shape[1]))
    raise ValueError(f"unknown aggregation {how!r}; one of {AGGREGATIONS}")


def denominator(how: str, mask: torch.Tensor, rewards: torch.Tensor, group_size: int,
                drop_equal_groups: bool = False, norm_len: int | None = None) -> float:
    """The denominator of a batch whose completions have `mask` [B, T] and `rewards` [B].

    >>> m = torch.tensor([[1., 1., 0.], [1., 1., 1.], [1., 0., 0.], [1., 0., 0.]])
    >>> r = torch.tensor([1., 0., 1., 1.])  # the second group is all equal
    >>> [denominator(h, m, r, 2, drop_equal_groups=True, norm_len=10) for h in AGGREGATIONS]
    [4.0, 5.0, 40.0]
    """
    keep = informative_rows(rewards, group_size) if drop_equal_groups else None
    return row_weights(how, mask.float(), keep, norm_len).sum().item()


def aggregate(token_loss: torch.Tensor, mask: torch.Tensor, how: str,
              denominator: float | None = None, keep: torch.Tensor | None = None,
              norm_len: int | None = None, weights: torch.Tensor | None = None) -> torch.Tensor:
    """sum over rows of each row's term / denominator. token_loss, mask [B, T] -> scalar.
    `denominator=None`: this batch is the whole batch (the loss used on its own). `weights` [B, T]:
    detached per-token weights on the terms (the engine correction, algorithms/engine.py); the
    denominator keeps counting every token, as a truncated importance weight does not
    renormalise."""
    # where(), not a product: a NaN at padding stays out
    masked = torch.where(mask > 0, token_loss, torch.zeros_like(token_loss))
    if weights is not None:
        masked = masked * weights
    rows = masked.sum(-1)  # [B]
    if how == "seq_mean":
        rows = rows / mask.sum(-1).clamp(min=1)
    if keep is not None:
        rows = torch.where(keep, rows, torch.zeros_like(rows))
    if denominator is None:
        denominator = row_weights(how, mask, keep, norm_len).sum().clamp(min=1)
    return rows.sum() / denominator


def weight_sums(w: torch.Tensor) -> dict[str, float]:
    """Sequence weights [B] -> the sums their effective sample size is made of, which add up over
    micro-batches and ranks, and the ESS of this batch alone (1..B)."""
    w = w.double()  # w <= e^60: its square overflows float32
    total, squares = w.sum().item(), (w**2).sum().item()
    return {"iw_sum": total, "iw_sq_sum": squares, "ess": effective_sample_size(total, squares)}


def effective_sample_size(total: float, squares: float) -> float:
    """(sum w)^2 / sum w^2 (Kish), from the summed weights and squared weights.

    >>> effective_sample_size(4.0, 4.0), effective_sample_size(1.0, 1.0)
    (4.0, 1.0)
    """
    return total**2 / squares if squares > 0 else 0.0
