"""MBPP+ (EvalPlus): 378 Python problems with the original asserts plus many extra tests.

Sources: hub `evalplus/mbppplus` (one split, `test`), or `task.data_path=` (the jsonl/jsonl.gz/parquet
file, or a directory with train.jsonl and test.jsonl already split). A single split is shuffled with
`task.split_seed` (42) and cut 70/30 like the paper: 264 train / 114 test. The prompt is the paper's:
the description and the first assert inside a docstring. Reward: the extracted code (rewards/code.py)
followed by `test_imports`, every assert of `test_list` and the `test` script passes in the sandbox
within `reward.timeout_s` (3 s).
"""

from __future__ import annotations

from pathlib import Path

from rapid_cli.config import RapidError
from rapid_cli.rewards.code import extract_code
from rapid_cli.tasks.code import CodeTask, split_records
from rapid_cli.tasks.sources import load_split
from rapid_cli.types import Problem

FIELDS = ["task_id", "prompt", "code", "test_imports", "test_list", "test"]


def to_problem(rec: dict, where: str) -> Problem:
    for key in ("test_list", "test_imports"):
        if not isinstance(rec[key], list) or not all(isinstance(x, str) for x in rec[key]):
            raise RapidError(f"{where}: field {key!r} must be a list of strings")
    if not rec["test_list"]:
        raise RapidError(f"{where}: field 'test_list' is empty (the prompt shows its first assert)")
    question = f'"""\n{rec["prompt"]}\n{rec["test_list"][0]}\n"""\n'
    return Problem(id=f"Mbpp/{rec['task_id']}", question=question, answer=rec["code"],
                   meta={k: rec[k] for k in ("test_imports", "test_list", "test")})


class MBPPTask(CodeTask):
    name = "mbpp"

    def load(self):
        path = Path(self.cfg.data_path).expanduser() if self.cfg.data_path else None
        if path is not None and path.is_dir():
            return tuple(self._problems(load_split(self.cfg, s, FIELDS, None, self.cache_dir)) for s in ("train", "test"))
        records = load_split(self.cfg, self.cfg.hub_split or "test", FIELDS, None, self.cache_dir)
        train, test = split_records(records, self.cfg.test_fraction, self.cfg.split_seed)
        return self._problems(train), self._problems(test)

    def _problems(self, records: list[dict]) -> list[Problem]:
        return [to_problem(r, f"mbpp record {i + 1} (task_id {r['task_id']})") for i, r in enumerate(records)]

    def program(self, completion: str, problem: Problem) -> str:
        m = problem.meta
        return "\n".join([*m["test_imports"], extract_code(completion), "", *m["test_list"], "", m["test"], ""])
