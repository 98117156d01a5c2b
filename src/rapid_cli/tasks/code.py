"""Code tasks: the reward runs the completion's program against the task's tests in the sandbox.

A subclass says how a completion becomes one self-checking program (`program`); the program passes
when it exits 0 within `reward.timeout_s`. A round's programs run in parallel (sandbox.run_many).
"""

from __future__ import annotations

from rapid_cli.tasks.base import Task
from rapid_cli.types import Problem


class CodeTask(Task):
    _sandbox = None

    def program(self, completion: str, problem: Problem) -> str:
        raise NotImplementedError

    @property
    def sandbox(self):
        if self._sandbox is None:
            from rapid_cli.sandbox import make_sandbox

            self._sandbox = make_sandbox(self.reward_cfg)
        return self._sandbox

    def outcomes(self, completions: list[str], problems: list[Problem]):
        return self.sandbox.run_many([self.program(c, p) for c, p in zip(completions, problems, strict=True)])

    def rewards(self, completions: list[str], problems: list[Problem]) -> list[float]:
        return [float(o.passed) for o in self.outcomes(completions, problems)]

    def reward(self, completion: str, problem: Problem) -> float:
        return self.rewards([completion], [problem])[0]


def split_records(records: list, test_fraction: float, seed: int) -> tuple[list, list]:
    """Seeded shuffle and cut, the same as Hugging Face `Dataset.train_test_split(test_size, seed=seed)`
    (test = the first ceil(n * test_fraction) of the permutation), so splits match the authors'.

    >>> train, test = split_records(list(range(378)), 0.3, 42)
    >>> len(train), len(test), test[:3]
    (264, 114, [376, 86, 253])
    """
    import math

    import numpy as np

    perm = np.random.default_rng(seed).permutation(len(records))
    n_test = math.ceil(test_fraction * len(records))
    return [records[i] for i in perm[n_test:]], [records[i] for i in perm[:n_test]]
