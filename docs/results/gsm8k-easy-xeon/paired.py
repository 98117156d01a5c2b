#!/usr/bin/env python3
"""A checkpoint's evaluation against the base model's, paired over the problems.

usage: paired.py RUN BASE [BASE ...]
RUN: a training run's evals/round-N.jsonl.gz or a `rapid eval` eval.json; BASE: the base model's eval.json files
(their per-problem pass@1 averaged over them). Prints the mean over problems of (run's pass@1 - base's pass@1) with
its 95% interval and a two-sided p-value (normal approximation).

Why paired over problems rather than a two-proportion test over the 800 samples: the 4 samples of one problem are
not independent (a problem the model can solve gives several correct ones), so counting samples as independent
makes the intervals too narrow; the p-values in docs/results.md before 2026-12-07 were computed that way.
"""
import collections
import gzip
import json
import math
import sys


def per_problem(path: str) -> dict[str, float]:
    """Each problem's fraction of correct samples."""
    if path.endswith(".gz"):
        correct, samples = collections.Counter(), collections.Counter()
        with gzip.open(path, "rt") as f:
            for line in f:
                row = json.loads(line)
                samples[row["id"]] += 1
                correct[row["id"]] += row["reward"] >= 1
        return {i: correct[i] / samples[i] for i in samples}
    with open(path) as f:
        result = json.load(f)
    return {p["id"]: p["correct"] / result["n"] for p in result["per_problem"]}


def main(run_path: str, *base_paths: str) -> None:
    run, bases = per_problem(run_path), [per_problem(p) for p in base_paths]
    if any(set(b) != set(run) for b in bases):
        sys.exit("the evaluations are not of the same problems")
    diffs = [run[i] - sum(b[i] for b in bases) / len(bases) for i in sorted(run)]
    mean = sum(diffs) / len(diffs)
    se = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1) / len(diffs))
    p = math.erfc(abs(mean / se) / math.sqrt(2)) if se else float("nan")
    solved = sum(v > 0 for v in run.values())
    solved_base = sum(any(b[i] > 0 for b in bases) for i in run)
    print(f"pass@1 {sum(run.values()) / len(run):.4f} against the base's "
          f"{sum(sum(b.values()) for b in bases) / len(bases) / len(run):.4f} ({len(bases)} evaluations): "
          f"paired difference {mean:+.4f} ± {1.96 * se:.4f} (95%), p = {p:.3f}; problems solved at least once: "
          f"{solved}, by the base in any of its evaluations {solved_base}")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__.split("\n\n")[1])
    main(*sys.argv[1:])
