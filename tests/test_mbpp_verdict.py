"""MBPP+ verdicts as EvalPlus gives them (issue 27): its comparison is type- and length-aware, where the
data set's own test script (numpy.allclose, no type or length check) let `[0]` pass for `[]`, `[x, x]` for
`[x]` and a tuple for a list of floats; its special oracles (Mbpp/558, 581, the set problems) accept the
second readings EvalPlus accepts. Problems here are hand-written in the data set's format."""

from __future__ import annotations

import gzip
import json

import pytest

from conftest import compose
from rapid_cli.rewards.asserts import Rule
from rapid_cli.rewards.verdict import Check, passes
from rapid_cli.tasks import make_task
from rapid_cli.tasks.mbpp import plus_tests

# The data set's test-script preamble (every MBPP+ `test` field starts like this): its is_floats calls `[]`
# floats, and its helper has no type or length check.
HEADER = """import numpy as np
from math import inf

def is_floats(x) -> bool:
    if isinstance(x, float):
        return True
    if isinstance(x, (list, tuple)):
        return all(isinstance(i, float) for i in x)
    if isinstance(x, np.ndarray):
        return x.dtype == np.float64 or x.dtype == np.float32
    return False

def assertion(out, exp, atol):
    if atol == 0 and is_floats(exp):
        atol = 1e-6
{set_lines}    if out != exp and atol != 0:
        assert np.allclose(out, exp, rtol=1e-07, atol=atol)
    else:
        assert out == exp, f"out: {{out}}, exp: {{exp}}"
"""


def script(entry: str, inputs: list, results: list, atol: float = 0, as_set: bool = False) -> str:
    lines = "    out = set(out)\n    exp = set(exp)\n" if as_set else ""
    return (HEADER.format(set_lines=lines) + f"\ninputs = {inputs!r}\nresults = {results!r}\n"
            f"for i, (inp, exp) in enumerate(zip(inputs, results)):\n    assertion({entry}(*inp), exp, {atol})\n")


def mbpp_check(expected, atol=0.0, rule=None, args=(1,)):
    return Check(rule or Rule("mbpp"), args, expected, atol)


# -- the comparison, on values ------------------------------------------------------------------
@pytest.mark.parametrize(("expected", "returned"), [
    ([], [0]),  # was: allclose([0], []) broadcasts to nothing, so it held
    ([], [5, 7]),
    ([1.5], [1.5, 1.5]),  # was: [x, x] broadcast against [x]
    ([1.5, 2.5], (1.5, 2.5)),  # was: a tuple for a list of floats
    ((1.5, 2.5), [1.5, 2.5]),
    (2.0000001, 2),  # was: an int within the tolerance of a float
    ([], ()),
])
def test_wrong_type_or_length_fails_like_evalplus(expected, returned):
    assert not passes(mbpp_check(expected), returned)


@pytest.mark.parametrize(("expected", "returned"), [
    ([1.0, 2.0], [1.0 + 1e-9, 2.0]),  # EvalPlus's float tolerance (atol 1e-6 at least, rtol 1e-7)
    (3.14159265, 3.1415925),
    ([1.0, 2.0], [1, 2]),  # equal under ==: an exact match needs no type check (EvalPlus's order)
    ([], []),
    (5, 5.0),
    ((1, "a"), (1, "a")),
])
def test_equal_or_close_values_still_pass(expected, returned):
    assert passes(mbpp_check(expected), returned)


def test_the_problems_tolerance_applies_to_floats_of_the_same_type_only():
    assert passes(mbpp_check(4188.790204786391, 1e-4), 4188.7902)
    assert not passes(mbpp_check(4188.790204786391, 1e-4), [4188.7902])
    assert not passes(mbpp_check([1.0], 1e-4), [1.0, 1.0])


# -- EvalPlus's per-problem rules, chosen from the test script ----------------------------------
def _rule(entry: str, **kw) -> Rule:
    return plus_tests(script(entry, [[1]], [1], **kw))[3]


def test_surface_area_accepts_evalplus_second_reading():
    """Mbpp/581: EvalPlus also accepts the area computed with `height` as the pyramid's height."""
    rule = _rule("surface_Area")
    assert rule.oracle == "surface_Area" and not rule.exact
    assert passes(mbpp_check(33, rule=rule, args=(3, 4)), 33)
    assert passes(mbpp_check(33, rule=rule, args=(3, 4)), 35)  # round(9 + 6 * sqrt(1.5 ** 2 + 16))
    assert not passes(mbpp_check(33, rule=rule, args=(3, 4)), 34)


def test_digit_distance_accepts_evalplus_zero_padded_reading():
    """Mbpp/558: EvalPlus also accepts the digit distance of the zero-padded numbers."""
    rule = _rule("digit_distance_nums")
    assert passes(mbpp_check(11, rule=rule, args=(123, 4)), 11)  # digits of |123 - 4|
    assert passes(mbpp_check(11, rule=rule, args=(123, 4)), 4)  # |1-0| + |2-0| + |3-4|
    assert not passes(mbpp_check(11, rule=rule, args=(123, 4)), 5)


def test_set_problems_follow_evalplus_list_even_with_a_plain_helper():
    """EvalPlus compares these functions' outputs as sets by name (Mbpp/249 is not in MBPP+ v0.2.0, but
    a file that has it is judged the EvalPlus way)."""
    rule = _rule("intersection_array")
    assert rule.wrap == "set"
    assert passes(mbpp_check([1, 2, 8], rule=rule), [8, 2, 1])
    assert not passes(mbpp_check([1, 2, 8], rule=rule), [8, 2])
    assert _rule("similar_elements", as_set=True).wrap == "set"
    assert _rule("some_function").wrap is None and _rule("some_function").oracle is None


def test_sum_div_and_are_equivalent_special_oracles():
    """Mbpp/295 (0 is accepted too) and Mbpp/164 (any returned value), as EvalPlus has them."""
    assert passes(mbpp_check(7, rule=_rule("sum_div"), args=(8,)), 0)
    assert not passes(mbpp_check(7, rule=_rule("sum_div"), args=(8,)), 1)
    assert passes(mbpp_check(True, rule=_rule("are_equivalent"), args=(36, 57)), False)


# -- end to end: candidate programs in the sandbox -----------------------------------------------
def _task(tmp_path, records):
    path = tmp_path / "mbpp.jsonl.gz"
    path.write_bytes(gzip.compress("\n".join(json.dumps(r) for r in records).encode()))
    cfg = compose(["task=mbpp", f"task.data_path={path}", "task.test_fraction=0.5"])
    task = make_task(cfg.task, cache_dir=str(tmp_path / "cache"), reward_cfg=cfg.reward)
    return task, {p.id: p for p in task.train + task.test}


HALVES = "def halves(xs):\n    return [x / 2 for x in xs if x % 2 == 0]\n"
SURFACE = "def surface_Area(b, s):\n    return 2 * b * s + pow(b, 2)\n"


def _records():
    halves_in = [[[2, 4]], [[1, 3]], [[6]], [[]]]
    halves = {"task_id": 9001, "prompt": "Write a function that halves the even numbers of a list.", "code": HALVES,
              "test_imports": [], "test_list": ["assert halves([2, 4]) == [1.0, 2.0]"],
              "test": script("halves", halves_in, [[1.0, 2.0], [], [3.0], []])}
    surface = {"task_id": 9002, "prompt": "Write a python function to find the surface area of a square pyramid "
               "with a given base edge and height.", "code": SURFACE, "test_imports": [],
               "test_list": ["assert surface_Area(3,4) == 33"],
               "test": script("surface_Area", [[3, 4], [1, 2]], [33, 5])}
    return [halves, surface]


def test_mutants_that_the_data_sets_script_passed_earn_nothing(tmp_path):
    task, problems = _task(tmp_path, _records())
    p = problems["Mbpp/9001"]
    body = "    r = [x / 2 for x in xs if x % 2 == 0]\n"
    programs = {
        "gold": HALVES,
        "ints where equal": "def halves(xs):\n    return [x // 2 for x in xs if x % 2 == 0]\n",
        "within tolerance": "def halves(xs):\n    return [x / 2 + 1e-9 for x in xs if x % 2 == 0]\n",
        "[0] for []": f"def halves(xs):\n{body}    return r or [0]\n",
        "[x, x] for [x]": f"def halves(xs):\n{body}    return r * 2 if len(r) == 1 else r\n",
        "tuple for list": f"def halves(xs):\n{body}    return tuple(r)\n",
    }
    got = dict(zip(programs, task.rewards([f"```python\n{c}```" for c in programs.values()], [p] * len(programs)),
                   strict=True))
    assert got == {"gold": 1.0, "ints where equal": 1.0, "within tolerance": 1.0,
                   "[0] for []": 0.0, "[x, x] for [x]": 0.0, "tuple for list": 0.0}


def test_evalplus_second_reading_passes_although_test_list_asserts_the_first(tmp_path):
    """EvalPlus judges the test_list inputs (its base inputs, which the test script repeats) by the same
    rule as the rest: the test_list assert `surface_Area(3,4) == 33` does not veto its special oracle."""
    task, problems = _task(tmp_path, _records())
    p = problems["Mbpp/9002"]
    other = ("import math\ndef surface_Area(b, h):\n"
             "    return round(b * b + 2 * b * math.sqrt((b / 2) ** 2 + h ** 2))\n")
    wrong = "def surface_Area(b, s):\n    return b * s\n"
    assert task.rewards([SURFACE, other, wrong], [p] * 3) == [1.0, 1.0, 0.0]


def test_a_candidate_gets_no_test_imports_as_evalplus_runs_it(tmp_path):
    """EvalPlus runs the program as written: a candidate using `math` without importing it fails with a
    NameError there, so it must not pass here because the problem's `test_imports` were prepended. The
    gold solution (which relies on them) still passes its reference run and its gold check."""
    gold = "def area(r):\n    return math.pi * r * r\n"
    record = {"task_id": 9003, "prompt": "Write a function for the area of a circle.", "code": gold,
              "test_imports": ["import math"], "test_list": ["assert math.isclose(area(1), 3.14159, rel_tol=0.001)"],
              "test": script("area", [[1], [2.0]], [3.141592653589793, 12.566370614359172])}
    task, problems = _task(tmp_path, [*_records(), record])
    p = problems["Mbpp/9003"]
    with_import = "import math\n" + gold
    assert task.rewards([f"```python\n{c}```" for c in (gold, with_import)], [p] * 2) == [0.0, 1.0]


def test_what_a_candidate_prints_is_thrown_away_as_evalplus_does(tmp_path):
    """EvalPlus swallows a candidate's prints; rapid sent them to the sandbox's stderr, a file capped at
    `file_mb` (8 MB), so a correct function that prints a large value failed with `OSError: File too large`
    (Mbpp/630's gold function printing its 11 MB of values: rapid 0, EvalPlus 1, scripts/xcheck_evalplus.py)."""
    gold = "def cells(n):\n    return [[i, j] for i in range(n) for j in range(n)]\n"
    loud = "def cells(n):\n    v = [[i, j] for i in range(n) for j in range(n)]\n    print(v)\n    return v\n"
    expected = [[[i, j] for i in range(n) for j in range(n)] for n in (2, 1000)]
    record = {"task_id": 9004, "prompt": "Write a function for the cells of an n x n grid.", "code": gold,
              "test_imports": [], "test_list": ["assert cells(2) == [[0, 0], [0, 1], [1, 0], [1, 1]]"],
              "test": script("cells", [[2], [1000]], expected)}
    task, problems = _task(tmp_path, [*_records(), record])
    p = problems["Mbpp/9004"]
    assert len(repr(expected[1])) > 8 << 20  # more than the sandbox lets a program write
    assert task.rewards([f"```python\n{c}```" for c in (gold, loud)], [p] * 2) == [1.0, 1.0]
