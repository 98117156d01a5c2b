"""Containers passed between the phases of a round."""

from __future__ import annotations

from dataclasses import dataclass, field


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


@dataclass
class Generations:
    """Sampler output for P prompts x n completions, grouped: row i belongs to prompt i // n.

    completion_ids[i]: token ids of completion i (ending with the stop token when finish_reason is "stop")
    logprobs[i]: behaviour log-prob of each of those tokens, log softmax(logits / T) without top-p
        truncation (what the trainer recomputes), same length; None when the sampler cannot report that
        quantity (vLLM with top_p < 1)
    finish_reasons[i]: "stop" | "length"
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
class Rollouts:
    """One round: P = A*M prompt groups of G completions each, contiguous by group (B = P*G rows).

    problems[g], prompt_ids[g]: the prompt of group g
    generations: B completions; rewards: B floats
    """

    problems: list[Problem]
    prompt_ids: list[list[int]]
    generations: Generations
    rewards: list[float]
    group_size: int

    def group_slice(self, first_group: int, n_groups: int) -> slice:
        G = self.group_size
        return slice(first_group * G, (first_group + n_groups) * G)

    def row_prompts(self, rows: slice) -> list[list[int]]:
        return [self.prompt_ids[i // self.group_size] for i in range(*rows.indices(len(self.rewards)))]
