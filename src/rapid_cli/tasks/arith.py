"""Synthetic integer arithmetic: generated from the seed, needs no download (the embedded default).

Problems are `a op b` with operands of 0..10^digits-1 and `op` from `task.ops`. The training stream
depends on the run's seed; the test set is fixed (its own seed), so runs with different seeds are
evaluated on the same problems. With one digit there are only 100 sums per operator, so train and test
overlap: the task measures a skill, not memorisation. Reward 1 when the final number (rewards.answers
rules) is exact.
"""

from __future__ import annotations

import random

from rapid_cli.rewards.answers import numeric_reward
from rapid_cli.tasks.base import Task
from rapid_cli.types import Problem

TEST_SEED = 1_000_003
_APPLY = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def make_problems(n: int, digits: int, ops: list[str], seed: int, prefix: str) -> list[Problem]:
    rng = random.Random(seed)
    hi = 10**digits - 1
    out = []
    for i in range(n):
        a, b, op = rng.randint(0, hi), rng.randint(0, hi), rng.choice(ops)
        out.append(Problem(id=f"{prefix}-{i}", question=f"{a} {op} {b}", answer=str(_APPLY[op](a, b))))
    return out


class ArithTask(Task):
    name = "arith"

    def load(self):
        c = self.cfg
        train = make_problems(c.num_train, c.digits, list(c.ops), seed=self.seed, prefix="train")
        test = make_problems(c.num_test, c.digits, list(c.ops), seed=TEST_SEED, prefix="test")
        return train, test

    def reward(self, completion: str, problem: Problem) -> float:
        return numeric_reward(completion, problem.answer)
