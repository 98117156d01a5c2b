"""Evaluation: n samples per test problem, scored by the task, reported as unbiased pass@k."""

from __future__ import annotations

from math import comb

from rapid_cli.types import SamplingParams


def pass_at_k(n: int, c: int, k: int) -> float:
    """Chen et al. (2021) unbiased estimator: P(at least one of k draws out of n is correct), c correct.

    >>> pass_at_k(4, 1, 1), pass_at_k(4, 1, 2), pass_at_k(4, 0, 4), pass_at_k(2, 2, 1)
    (0.25, 0.5, 0.0, 1.0)
    """
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def evaluate(task, problems, prompt_ids, sampler, params: SamplingParams, ks) -> dict[str, float]:
    """Generate params.n completions for each problem; returns `eval/` metrics."""
    gens = sampler.generate(prompt_ids, params)
    rows = [p for p in problems for _ in range(params.n)]
    rewards = task.rewards(gens.texts, rows)
    metrics = {"eval/reward_mean": sum(rewards) / max(1, len(rewards)), "eval/problems": len(problems)}
    correct = [sum(r >= 1.0 for r in rewards[i * params.n : (i + 1) * params.n]) for i in range(len(problems))]
    for k in ks:
        metrics[f"eval/pass@{k}"] = sum(pass_at_k(params.n, c, k) for c in correct) / max(1, len(problems))
    metrics["eval/completion_tokens_mean"] = gens.num_tokens / max(1, len(gens))
    return metrics
