"""MBPP+ and HumanEval: the paper's split and prompt, code extraction, and every gold solution passing
its tests in the sandbox while wrong code scores 0."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest

from conftest import REPO, compose
from rapid_cli.errors import RapidError
from rapid_cli.rewards.code import extract_code
from rapid_cli.tasks import make_task


def _mbpp_file() -> Path:
    """The MBPP+ copy for tests: $RAPID_MBPP_FILE, else the workspace's shared data beside the checkout
    (CI, cloning elsewhere, sets the variable in .ci/run). The project never ships a copy."""
    relative = Path("data") / "mbppplus" / "MbppPlus-OriginFmt.jsonl.gz"
    candidates = [os.environ.get("RAPID_MBPP_FILE"), REPO.parent / "shared" / relative]
    return next((Path(c) for c in candidates if c and Path(c).exists()), REPO.parent / "shared" / relative)


MBPP_FILE = _mbpp_file()
needs_mbpp = pytest.mark.skipif(not MBPP_FILE.exists(),
                                reason=f"MBPP+ test copy not found ({MBPP_FILE}); set RAPID_MBPP_FILE")
# Gold solutions are checked against the tests themselves, so give slow machines room: a few MBPP+
# reference solutions need more than the 3 s / 1 GiB training limits on a 2-core CPU.
ROOMY = ["reward.timeout_s=90", "reward.memory_mb=4096"]


def mbpp(*extra):
    cfg = compose(["task=mbpp", f"task.data_path={MBPP_FILE}", *extra])
    return make_task(cfg.task, reward_cfg=cfg.reward)


@needs_mbpp
def test_mbpp_split_and_prompt_follow_the_paper():
    task = mbpp()
    train, test = task.splits()
    # The paper's 264 / 114, less the problems whose gold solution cannot pass within the limits (Mbpp/255,
    # in the test split, needs minutes and over 2 GiB): they are left out (test_mbpp_limits.py).
    whole = task.load()
    assert (len(whole[0]), len(whole[1])) == (264, 114) and len(train) == 264
    assert {p.id for p in whole[1]} - {p.id for p in test} <= {"Mbpp/255"}
    assert not {p.id for p in train} & {p.id for p in test}
    assert [p.id for p in test[:3]] == [p.id for p in mbpp().test[:3]]  # seeded: the same every time
    first = test[0]
    assert first.question.startswith('"""\n') and first.question.endswith('\n"""\n')
    assert first.meta["test_list"][0] in first.question
    other = mbpp("task.split_seed=1").test
    assert [p.id for p in other] != [p.id for p in test]


@needs_mbpp
def test_every_mbpp_gold_solution_passes_and_wrong_code_fails():
    task = mbpp(*ROOMY)
    problems = task.train + task.test
    # Every test converts to (inputs, expected, rule) form. Mbpp/255's gold solution needs more than 2 GiB
    # and minutes for EvalPlus's extra inputs: its reference run does not finish within the reference
    # limits, so it is left out of the splits (named once) rather than scoring 0 for everyone.
    assert len(problems) in (377, 378) and ("Mbpp/255" in {p.id for p in problems}) == (len(problems) == 378)
    assert not [p.id for p, s in zip(problems, task.suites(problems), strict=True) if s.error]
    assert sum(len(s.checks) for s in task.suites(problems)) > 30000  # test_list + EvalPlus's inputs
    gold = task.rewards([f"Here you go:\n```python\n{p.answer}\n```" for p in problems], problems)
    failed = [p.id for p, r in zip(problems, gold, strict=True) if r != 1.0]
    assert failed == []
    shifted = [problems[(i + 1) % len(problems)].answer for i in range(len(problems))]  # another problem's code
    assert sum(task.rewards(shifted, problems)) == 0
    assert sum(task.rewards(["", "I don't know.", "```python\nimport sys\nsys.exit(0)\n```"], problems[:3])) == 0


def test_every_humaneval_gold_solution_passes_and_wrong_code_fails(tmp_path):
    cfg = compose(["task=humaneval"])
    task = make_task(cfg.task, cache_dir=str(tmp_path), reward_cfg=cfg.reward)
    problems = task.test
    assert len(problems) == 164  # every check() converts
    assert task.rewards([p.answer for p in problems], problems) == [1.0] * 164
    assert sum(task.rewards(["    return None\n"] * 164, problems)) == 0
    # The expected values were recorded once, by reference runs, and cached: a new task reads them.
    again = make_task(cfg.task, cache_dir=str(tmp_path), reward_cfg=cfg.reward)
    assert [s.checks for s in again.suites(problems)] == [s.checks for s in task.suites(problems)]
    assert again._reference_sandbox is None and len(list((tmp_path / "code-checks" / "humaneval").glob("*.txt"))) == 164


@needs_mbpp
def test_mbpp_problem_whose_tests_cannot_be_converted_is_left_out(tmp_path, capsys):
    records = [json.loads(line) for line in gzip.open(MBPP_FILE, "rt")][:3]
    records[1]["test"] += "\nprint('checked')\n"  # no longer ends in EvalPlus's loop
    records[2]["test_list"] = [records[2]["test_list"][0], "assert sorted(x for x in [1]) == [1]"]
    task = mbpp(f"task.data_path={_write(tmp_path / 'odd.jsonl.gz', records)}", "task.test_fraction=0.5")
    kept = {p.id for p in task.train + task.test}
    assert kept == {f"Mbpp/{records[0]['task_id']}"}
    out = " ".join(capsys.readouterr().out.split())
    assert "left out" in out and "not EvalPlus's inputs/results loop" in out and "assert form not supported" in out


def test_humaneval_programs_from_chat_and_base_style_completions():
    cfg = compose(["task=humaneval"])
    task = make_task(cfg.task, reward_cfg=cfg.reward)
    p = task.test[0]  # has_close_elements
    whole = f"Sure!\n```python\ndef {p.meta['entry_point']}(numbers, threshold):\n" \
            "    return any(abs(a - b) < threshold for i, a in enumerate(numbers) for b in numbers[i + 1:])\n```"
    cut = p.answer + "\n\ndef unrelated():\n    raise SystemExit(1)\n\nprint(unrelated())\n"  # base model runs on
    wrong = whole.replace("< threshold", "> threshold")
    assert task.rewards([whole, cut, wrong], [p, p, p]) == [1.0, 1.0, 0.0]


def test_extract_code_rules():
    assert extract_code("```py\na = 1\n```\ntext\n```python\nb = 2\n```") == "b = 2\n"  # the LAST python block
    assert extract_code("```js\nx\n```\n```\ny = 3\n```") == "y = 3\n"  # else the last fenced block
    assert extract_code("```python\ndef f():\n    return 1") == "def f():\n    return 1"  # unclosed at max_tokens
    assert extract_code("def g(): pass") == "def g(): pass"  # else the raw text


def _write(path: Path, records: list[dict]) -> Path:
    path.write_bytes(gzip.compress("\n".join(json.dumps(r) for r in records).encode()))
    return path


@needs_mbpp
def test_mbpp_bad_data_names_file_line_and_field(tmp_path):
    records = [json.loads(line) for line in gzip.open(MBPP_FILE, "rt")][:5]
    broken = [dict(r) for r in records]
    del broken[3]["test"]
    with pytest.raises(RapidError, match=r"bad.jsonl.gz, line 4: missing field 'test'"):
        mbpp(f"task.data_path={_write(tmp_path / 'bad.jsonl.gz', broken)}").splits()
    wrong_type = [dict(r) for r in records]
    wrong_type[1]["test_list"] = "assert f(1) == 1"
    with pytest.raises(RapidError, match=r"record 2 .*'test_list' must be a list"):
        mbpp(f"task.data_path={_write(tmp_path / 'type.jsonl.gz', wrong_type)}").splits()
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(RapidError, match="has no records"):
        mbpp(f"task.data_path={empty}").splits()


def test_mbpp_without_data_says_what_to_set():
    cfg = compose(["task=mbpp", "task.source=offline"])
    with pytest.raises(RapidError, match="task.data_path"):
        make_task(cfg.task).splits()


def test_humaneval_whole_function_without_an_opening_fence():
    cfg = compose(["task=humaneval"])
    task = make_task(cfg.task, reward_cfg=cfg.reward)
    p = task.test[0]
    bare = f"def {p.meta['entry_point']}(numbers, threshold):\n" \
           "    return any(abs(a - b) < threshold for i, a in enumerate(numbers) for b in numbers[i + 1:])\n" \
           "```\n\nIn this code, the function compares every pair.\n"
    assert task.rewards([bare], [p]) == [1.0]


def test_a_new_code_task_only_describes_its_tests(tmp_path):
    """The generic interface: a task gives the candidate's code and its tests as rows of (arguments,
    expected value, rule); the reference run, the cache, the candidate run and the outside verdict
    are CodeTask's."""
    from rapid_cli.rewards.asserts import Rule
    from rapid_cli.rewards.verdict import table_source
    from rapid_cli.tasks.code import CodeTask
    from rapid_cli.types import Problem

    class Square(CodeTask):
        name = "square"

        def program(self, completion, problem):
            return extract_code(completion)

        def test_source(self, problem):
            rows = [((x,), x * x, Rule("eq"), None) for x in range(-3, 4)] + [((0.1,), 0.01, Rule("abs_lt"), 1e-9)]
            return table_source("square", problem.answer, rows)

    cfg = compose(["task=humaneval"])
    task = Square(cfg.task, cache_dir=str(tmp_path), reward_cfg=cfg.reward)
    p = Problem("square/1", "Write square(x).", "def square(x):\n    return x * x\n")
    wrong = "def square(x):\n    return abs(x) * 2\n"  # right for 0 and 2 only
    forged = "class Yes(int):\n    def __eq__(s, o): return True\n    __hash__ = int.__hash__\n" \
             "def square(x):\n    return Yes(0)\n"
    assert task.rewards([p.answer, wrong, forged], [p] * 3) == [1.0, 0.0, 0.0]
    assert len(task.suites([p])[0].checks) == 8
