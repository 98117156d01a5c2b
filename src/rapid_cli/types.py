"""Containers passed between the phases of a round.

torch is imported where a tensor is made, not with the module: the reward worker processes
(`reward.pool=process`) import `Scores` from here and never touch a tensor.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@dataclass
class Problem:
    """One task instance. `answer` is the reference the reward checks against; `meta` is task-specific."""

    id: str
    question: str
    answer: str
    meta: dict = field(default_factory=dict)


@dataclass
class SamplingParams:
    n: int = 1  # completions per prompt
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    max_tokens: int = 128
    seed: int = 0
    prompt_seeds: list[int] | None = None  # one per prompt: its samples do not depend on the batch around it (hf)
    # a completion also ends at the first of these strings in its text (lm-eval's `until`): its tokens up to the one
    # that completes the string, its text up to where the string starts, finish reason "stop"
    stop: tuple[str, ...] = ()


@dataclass
class Generations:
    """Sampler output for P prompts x n completions, grouped: row i belongs to prompt i // n.

    completion_ids[i]: token ids of completion i (ending with the stop token, or the token completing a stop string,
        when finish_reason is "stop")
    logprobs[i]: behaviour log-prob of each of those tokens, log softmax(logits / T) without top-p
        truncation (what the trainer recomputes), same length; None when the sampler cannot report that
        quantity (vLLM with top_p < 1)
    finish_reasons[i]: "stop" | "length"
    texts[i]: the completion's text, special tokens left out, cut before the stop string it ended at
    """

    completion_ids: list[list[int]]
    logprobs: list[list[float]] | None
    finish_reasons: list[str]
    texts: list[str]

    def __len__(self) -> int:
        return len(self.completion_ids)

    @property
    def num_tokens(self) -> int:
        return sum(len(c) for c in self.completion_ids)


@dataclass
class Scores:
    """A round's rewards: the weighted total per row, and each function's values (None: not applicable)."""

    total: list[float]
    parts: dict[str, list[float | None]] = field(default_factory=dict)


def pad_rows(rows: list[list[float]], width: int) -> torch.Tensor:
    """Ragged per-token rows as one float32 tensor [len(rows), width], 0 past each row's end.

    >>> pad_rows([[1.0, 2.0], [3.0]], 3).tolist()
    [[1.0, 2.0, 0.0], [3.0, 0.0, 0.0]]
    """
    import torch

    out = torch.zeros((len(rows), width), dtype=torch.float32)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r, dtype=torch.float32)
    return out


@dataclass
class Rollouts:
    """One round: P = A*M prompt groups of G completions each, contiguous by group (B = P*G rows).

    problems[g], prompt_ids[g]: the prompt of group g
    generations: B completions; rewards: B floats

    Per-token tensors, float32 [B, T] with T = the round's longest completion (at least 1) and 0 past
    each completion's end (rows of a micro-batch: `tensor[rows, : width(rows)]`):
      completion_mask: 1 on each completion's tokens
      sampler_logprobs: the sampler's behaviour log-probs; None when it reports none
      old_logprobs: log pi_old, set by the round's old_logprobs phase; None: no row's is recorded
      old_rows: [B] bool, the rows whose pi_old `old_logprobs` holds (None: none). The others were sampled
          by the very policy their optimizer step starts from (the round's first mini-batch, or every
          mini-batch when A = 1), so their pi_old is that step's own detached log-probs.
      ref_logprobs: the frozen reference policy's log-probs (a KL penalty), set by the ref_logprobs phase
    moving: [B] bool, the rows whose gradient can be non-zero (whole groups; the others are left out of every
        forward pass: Learner.moving_rows); None: all rows
      engine_correction: none | tis | mis, how the steps correct for the engine's mu (algorithms/engine.py)
    """

    problems: list[Problem]
    prompt_ids: list[list[int]]
    generations: Generations
    rewards: list[float]
    group_size: int
    old_logprobs: torch.Tensor | None = None
    old_rows: torch.Tensor | None = None
    ref_logprobs: torch.Tensor | None = None
    moving: torch.Tensor | None = None
    engine_correction: str = "none"
    completion_mask: torch.Tensor = field(init=False, repr=False)
    sampler_logprobs: torch.Tensor | None = field(init=False, repr=False)

    def __post_init__(self):
        import torch

        comp, lp = self.generations.completion_ids, self.generations.logprobs
        lengths = torch.tensor([len(c) for c in comp])
        T = self.width()
        self.completion_mask = (torch.arange(T) < lengths[:, None]).float()  # [B, T]
        self.sampler_logprobs = None if lp is None else pad_rows(lp, T)  # [B, T]

    def width(self, rows: slice = slice(None)) -> int:
        """The longest completion among `rows`, at least 1: T for the round, C for a micro-batch."""
        return max(1, max((len(c) for c in self.generations.completion_ids[rows]), default=0))

    def group_slice(self, first_group: int, n_groups: int) -> slice:
        G = self.group_size
        return slice(first_group * G, (first_group + n_groups) * G)

    def moving_groups(self, rows: slice) -> list[int]:
        """The groups among whole-group `rows` that hold moving rows (all of them when `moving` is None)."""
        G = self.group_size
        groups = range(rows.start // G, rows.stop // G)
        return list(groups) if self.moving is None else [g for g in groups if self.moving[g * G]]

    def take(self, groups: list[int]) -> Rollouts:
        """These groups' rows as rollouts of their own (per-token tensors cut to their longest completion)."""
        G = self.group_size
        import torch

        rows = [g * G + i for g in groups for i in range(G)]
        gens = self.generations
        part = Generations([gens.completion_ids[i] for i in rows],
                           None if gens.logprobs is None else [gens.logprobs[i] for i in rows],
                           [gens.finish_reasons[i] for i in rows], [gens.texts[i] for i in rows])
        out = Rollouts([self.problems[g] for g in groups], [self.prompt_ids[g] for g in groups], part,
                       [self.rewards[i] for i in rows], G, engine_correction=self.engine_correction)
        index, T = torch.tensor(rows, dtype=torch.long), out.width()

        def cut(t: torch.Tensor | None) -> torch.Tensor | None:  # [B, T] -> [b, T'], [B] -> [b]
            return None if t is None else t[index, :T] if t.dim() == 2 else t[index]

        out.old_logprobs, out.old_rows, out.ref_logprobs, out.sampler_logprobs = map(
            cut, (self.old_logprobs, self.old_rows, self.ref_logprobs, self.sampler_logprobs))
        return out

    def row_prompts(self, rows: slice) -> list[list[int]]:
        return [self.prompt_ids[i // self.group_size] for i in range(*rows.indices(len(self.rewards)))]
