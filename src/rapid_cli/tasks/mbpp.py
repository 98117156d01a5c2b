"""MBPP+ (EvalPlus): 378 Python problems with the original asserts plus many extra tests.

Sources: hub `evalplus/mbppplus` (one split, `test`), or `task.data_path=` (the jsonl/jsonl.gz/parquet
file, or a directory with train.jsonl and test.jsonl already split). A single split is shuffled with
`task.split_seed` (42) and cut 70/30 like the paper: 264 train / 114 test. The prompt is the paper's:
the description and the first assert inside a docstring. Reward: the extracted code (rewards/code.py), as
written (the problem's `test_imports` are not prepended; EvalPlus does not either), is called in the sandbox
on the `test` script's `inputs` (EvalPlus's base + plus inputs) and on any `test_list` assert's arguments
the script lacks, each call within EvalPlus's limit (max(4 s, 4 x the gold solution's time on that input),
the whole run within their sum, at most 60 s or 4 x the gold solution's whole time, plus 2 s;
reward.timeout_s does not apply); the values it returns are compared outside with the expected ones as
EvalPlus compares them (type- and length-aware, its float tolerance, its per-problem oracles:
rewards/verdict.py, mbpp_close). A problem whose gold solution (run after its `test_imports`; none of the 10
MBPP+ gold solutions with them needs them) does not pass within the limits is left out of the splits
(tasks/code.py).
"""

from __future__ import annotations

import ast
from pathlib import Path

from rapid_cli.errors import RapidError
from rapid_cli.rewards.asserts import RECORD, Rule, Unconvertible, record_asserts, uses
from rapid_cli.rewards.code import extract_code
from rapid_cli.rewards.verdict import ORACLES, TestSource
from rapid_cli.tasks.code import CodeTask
from rapid_cli.tasks.sources import load_split, split_records
from rapid_cli.types import Problem

FIELDS = ["task_id", "prompt", "code", "test_imports", "test_list", "test"]
# EvalPlus compares these functions' outputs as sets (evalplus/eval/_special_oracle.py, MBPP_OUTPUT_SET_EQ_TASKS);
# the data set's own helper does so for the 7 of them it holds (Mbpp/249 is not in MBPP+ v0.2.0).
SET_EQ = frozenset({"similar_elements", "find_char_long", "common_in_nested_lists", "extract_singly", "larg_nnum",
                    "intersection_array", "find_dissimilar", "Diff"})


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
    per_input_limits = True  # EvalPlus's: max(4 s, 4 x the gold solution's time) per input (rewards/verdict.py)

    def load(self):
        path = Path(self.cfg.data_path).expanduser() if self.cfg.data_path else None
        if path is not None and path.is_dir():
            return tuple(self._problems(load_split(self.cfg, s, FIELDS, None, self.cache_dir))
                         for s in ("train", "test"))
        records = load_split(self.cfg, self.cfg.hub_split or "test", FIELDS, None, self.cache_dir)
        train, test = split_records(records, self.cfg.test_fraction, self.cfg.split_seed)
        return self._problems(train), self._problems(test)

    def _problems(self, records: list[dict]) -> list[Problem]:
        return [to_problem(r, f"mbpp record {i + 1} (task_id {r['task_id']})") for i, r in enumerate(records)]

    def program(self, completion: str, problem: Problem) -> str:
        # As EvalPlus runs it: the problem's test_imports serve its asserts and its gold solution, not the
        # candidate, so code that uses `math` without importing it fails.
        return extract_code(completion)

    def test_source(self, problem: Problem) -> TestSource:
        m = problem.meta
        entry, header, loop, rule = plus_tests(m["test"])
        listed, rules = record_asserts(ast.parse("\n".join(m["test_list"])), entry, first_rule=1)
        context = "\n".join([*m["test_imports"], problem.answer])
        return TestSource(entry, context, f"{header}\n\n{loop}\n\n{ONLY_NEW_INPUTS}\n{listed}\n", (rule, *rules))


# Runs between the test script's loop (rule 0) and the recorded `test_list` asserts: an assert whose
# arguments the script already checks is not recorded again. EvalPlus judges those inputs (its "base"
# inputs, which the script repeats first) by the script's rule only, so a test_list assert must not veto
# what EvalPlus accepts there (Mbpp/581's second reading fails `surface_Area(3,4) == 33`); an input only
# test_list has (a user's file) is still checked by its assert.
ONLY_NEW_INPUTS = f"""
import json as _rapid_json
_rapid_seen = {{_rapid_json.dumps(_c[1]) for _c in _rapid_checks}}
_rapid_rec_any = {RECORD}


def {RECORD}(k, args, expected, param=None):
    if _rapid_json.dumps(_rapid_p["encode"](tuple(args))) not in _rapid_seen:
        _rapid_rec_any(k, args, expected, param)
"""


def plus_tests(test: str) -> tuple[str, str, str, Rule]:
    """The EvalPlus `test` script as (function name, the script without its final loop, that loop
    recording instead of asserting, rule). The loop must be EvalPlus's: one call
    `assertion(f(*inp), expected, atol)` per input (expected: `exp` from `results`, or `ref_func(*inp)`),
    and `assertion` one of its three helpers: allclose-or-equal, the same on set(out) / set(exp), or
    one that asserts nothing (three problems whose expected values say whether a match was found:
    there the rule checks that, `out is not None` or the bool). The loop records its checks as rule 0.
    The rule is EvalPlus's: `mbpp` (verdict.mbpp_close), on sets for its set problems (SET_EQ, or a helper
    comparing sets), with its special oracle for the functions it has one for (verdict.ORACLES)."""
    tree = ast.parse(test)
    loop = tree.body[-1] if tree.body else None
    call = (loop.body[0].value
            if isinstance(loop, ast.For) and len(loop.body) == 1 and isinstance(loop.body[0], ast.Expr) else None)
    inner, expected, atol = call.args if isinstance(call, ast.Call) and len(call.args) == 3 else (None, None, None)
    helpers = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "assertion"]
    if not (inner is not None and ast.unparse(call.func) == "assertion" and len(helpers) == 1
            and isinstance(inner, ast.Call) and isinstance(inner.func, ast.Name) and len(inner.args) == 1
            and isinstance(inner.args[0], ast.Starred) and isinstance(atol, ast.Constant)
            and type(atol.value) in (int, float) and not uses(expected, inner.func.id)):
        raise Unconvertible("the test script is not EvalPlus's inputs/results loop")
    helper = helpers[0]
    nodes = list(ast.walk(helper))
    if not any(isinstance(n, ast.Assert) for n in nodes):
        rule = Rule("eq", observe="not_none")
    elif any(isinstance(n, ast.Attribute) and n.attr == "allclose" for n in nodes):
        as_set = (inner.func.id in SET_EQ
                  or any(isinstance(n, ast.Assign) and ast.unparse(n) == "out = set(out)" for n in nodes))
        oracle = inner.func.id if inner.func.id in ORACLES else None
        rule = Rule("mbpp", wrap="set" if as_set and not oracle else None, oracle=oracle)
    else:
        raise Unconvertible("unknown assertion helper in the test script")
    loop.body[0].value = ast.Call(ast.Name(RECORD, ast.Load()), [ast.Constant(0), inner.args[0].value,
                                                                 expected, atol], [])
    header = "\n".join(test.splitlines()[: loop.lineno - 1])
    return inner.func.id, header, ast.unparse(ast.fix_missing_locations(loop)), rule
