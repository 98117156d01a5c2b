"""MBPP+ limits as EvalPlus sets them (issue 27): each input gets max(4 s, 4 x the gold solution's time on
it), the whole run the sum of those (at most 60 s) from outside; a problem whose gold solution cannot pass
within the limits is left out of the splits and named once. Problems are hand-written in the data set's
format (tests/test_mbpp_verdict.py's `script`) and run in the real sandbox."""

from __future__ import annotations

import gzip
import json

from conftest import compose
from rapid_cli.rewards.verdict import MARK, Suite
from rapid_cli.tasks import make_task
from test_mbpp_verdict import script


def _task(tmp_path, records, *overrides):
    path = tmp_path / "mbpp.jsonl.gz"
    path.write_bytes(gzip.compress("\n".join(json.dumps(r) for r in records).encode()))
    cfg = compose(["task=mbpp", f"task.data_path={path}", "task.test_fraction=0.5", *overrides])
    return make_task(cfg.task, cache_dir=str(tmp_path / "cache"), reward_cfg=cfg.reward)


def _record(task_id: int, entry: str, code: str, inputs: list, results: list) -> dict:
    return {"task_id": task_id, "prompt": f"Write {entry}.", "code": code, "test_imports": [],
            "test_list": [f"assert {entry}(*{inputs[0]!r}) == {results[0]!r}"],
            "test": script(entry, inputs, results)}


DOUBLE = "def double(x):\n    return 2 * x\n"


def test_problems_whose_gold_solution_cannot_pass_are_left_out_and_named_once(tmp_path, capsys):
    records = [
        _record(9101, "double", DOUBLE, [[1], [2]], [2, 4]),
        # the gold solution disagrees with the data set's expected values: its reference run fails
        _record(9102, "triple", "def triple(x):\n    return 3 * x + 1\n", [[1], [2]], [3, 6]),
        # passes with the reference run's room (4 GiB), not within the candidate's 1 GiB
        _record(9103, "big", "def big(x):\n    return len(bytearray(1536 << 20)) and x\n", [[1]], [1]),
    ]
    task = _task(tmp_path, records)
    kept = [p.id for p in task.train + task.test]
    out = capsys.readouterr().out
    assert kept == ["Mbpp/9101"]
    lines = [line for line in out.splitlines() if "left out" in line]
    assert len(lines) == 1, out
    assert "task=mbpp: 2 of 3 problems left out: their gold solution does not pass within the limits" in lines[0]
    assert "Mbpp/9102" in lines[0] and "Mbpp/9103" in lines[0] and "Mbpp/9101" not in lines[0]
    assert "every completion scores 0" not in out  # no second report per problem
    # The outcome is cached: a new start names them again without running anything.
    again = _task(tmp_path, records)
    assert [p.id for p in again.train + again.test] == kept
    assert again._reference_sandbox is None and again._sandbox is None
    assert [line for line in capsys.readouterr().out.splitlines() if "left out" in line] == lines


def test_one_input_over_its_limit_fails_whatever_the_program_does(tmp_path):
    """The gold solution is fast, so every input's limit is EvalPlus's floor (4 s) and the run's limit
    4 x 4 + 2 = 18 s: a candidate that is fast on three inputs and takes 5 s on one fails, whether it
    lets the alarm stop it, swallows it, ignores SIGALRM, or prints a forged results line and then
    outlasts the run's limit."""
    inputs = [[1], [2], [3], [4]]
    task = _task(tmp_path, [_record(9111, "double", DOUBLE, inputs, [2, 4, 6, 8])])
    (p,) = task.train + task.test
    suite = task.suites([p])[0]
    assert suite.input_limits() == (4.0,) * 4 and suite.run_limit() == 18.0
    slow = "import time\ndef double(x):\n    if x == 3:\n{}\n    return 2 * x\n"
    forged = MARK + json.dumps([[1, 2], [1, 4], [1, 6], [1, 8]])
    programs = {
        "fast": DOUBLE,
        "slow once": slow.format("        time.sleep(5)"),
        "swallows the alarm": slow.format("        try:\n            time.sleep(5)\n"
                                          "        except BaseException:\n            pass"),
        "ignores SIGALRM": "import signal\n" + slow.format("        signal.signal(signal.SIGALRM, signal.SIG_IGN)\n"
                                                           "        time.sleep(5)"),
        "forges, then hangs": "import os, signal\n" + slow.format(
            f"        os.write(1, ('\\n' + {forged!r} + '\\n').encode())\n"
            "        signal.signal(signal.SIGALRM, signal.SIG_IGN)\n        while True:\n            time.sleep(1)"),
    }
    got = dict(zip(programs, task.rewards(list(programs.values()), [p] * len(programs)), strict=True))
    assert got == {"fast": 1.0, "slow once": 0.0, "swallows the alarm": 0.0, "ignores SIGALRM": 0.0,
                   "forges, then hangs": 0.0}


def test_limits_scale_with_the_gold_solutions_own_time(tmp_path):
    """The gold solution takes 2.5 s per input, so each input may take 10 s: a candidate twice as slow
    passes although its run (10 s) is far beyond the old 3 s for the whole problem; one 4.5 x as slow
    fails."""
    gold = "import time\ndef slow_id(x):\n    time.sleep(2.5)\n    return x\n"
    task = _task(tmp_path, [_record(9121, "slow_id", gold, [[1], [2]], [1, 2])])
    (p,) = task.train + task.test
    suite = task.suites([p])[0]
    assert all(9.5 < t < 14 for t in suite.input_limits()), suite.times
    twice = gold.replace("2.5", "5.0")
    too_slow = gold.replace("2.5", "11.25")
    assert task.rewards([twice, too_slow], [p, p]) == [1.0, 0.0]


def test_without_gold_times_the_whole_run_keeps_reward_timeout(tmp_path):
    """A suite whose reference run reported no times (none is cached that way, but a task may build one)
    has no per-input limits: the run falls back to reward.timeout_s."""
    assert Suite(()).input_limits() is None and Suite(()).run_limit() is None
