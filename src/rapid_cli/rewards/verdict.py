"""Code rewards decided outside the jail, from plain data.

A code task describes its tests as a `TestSource`: the dataset's test code rewritten to *record*
checks (argument tuple, expected value, rule) instead of asserting them (rewards/asserts.py, or a
task's own converter). The pass/fail decision never happens where the candidate runs:

1. Reference run (once per problem, cached on disk): the gold solution and the recording test code
   run in the jail; it prints the checks, and the gold solution's own outputs on them, as plain data
   (rewards/plain.py). The checks are valid only if the gold solution passes every one of them.
2. Candidate run (every completion): the jail gets the candidate's code and the argument tuples only,
   never the expected values or the test code; it calls the function on each tuple and prints the
   return values as plain data. A value that is not plain data (a custom class, an object whose
   __eq__ lies) cannot be encoded, and that call fails.
3. Verdict (outside, `passes`): the printed values are parsed with json and rebuilt by plain.decode,
   then compared with the cached expected values by each check's rule.

Whatever the candidate does inside its process (patching the encoder, tracing hooks, fake modules,
printing a forged result line, exiting early) it can only change the values it reports, and it
passes only if those values satisfy the dataset's rule for inputs whose expected outputs it never
saw: that is solving the test.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import cache, cached_property

from rapid_cli.rewards import plain
from rapid_cli.rewards.asserts import RECORD, Rule

MARK = "\x1erapid-values "  # starts the line that carries the results; the last such line counts
TIMES = "\x1erapid-times "  # starts the reference run's line of the gold solution's seconds per call
BIG = 1 << 16  # an exactly-compared value whose canonical form is longer than this travels as its digest
VERSION = 6  # part of the cache key: bump when the recording or the comparison changes

# EvalPlus's time limits (evalplus/config.py and evalplus/eval/__init__.py, untrusted_check, at 26d6d00): each
# input gets max(MIN_INPUT_S, GOLD_FACTOR x the gold solution's time on it); the whole run gets the sum of
# those, at most TASK_CAP_S (or GOLD_FACTOR x the gold's whole time, if more: Suite.run_limit), plus a little
# for starting up and reporting (EvalPlus: 1-3 s).
MIN_INPUT_S = 4.0
GOLD_FACTOR = 4.0
TASK_CAP_S = 60.0
RUN_EXTRA_S = 2.0


@dataclass(frozen=True)
class TestSource:
    """A problem's tests, ready for the reference run. `context` (the gold solution and the dataset's
    helper code) and `record` (test code calling `_rapid_rec(k, args, expected, param)`) run only in
    the reference jail; `rules[k]` judges the checks recorded with index k; `entry` is the function
    the checks call."""

    entry: str
    context: str
    record: str
    rules: tuple[Rule, ...]

    def key(self) -> str:
        import hashlib

        text = json.dumps([VERSION, self.entry, self.context, self.record, [vars(r) for r in self.rules]])
        return hashlib.sha256(text.encode()).hexdigest()[:32]


def table_source(entry: str, context: str, rows: list[tuple[tuple, object, Rule, object]]) -> TestSource:
    """Tests given as data, for a code task whose dataset lists (arguments, expected value, rule, param)
    rows instead of asserts; `context` is the gold solution, which must pass every row."""
    rules = list(dict.fromkeys(row[2] for row in rows))
    data = json.dumps(plain.encode([[rules.index(rule), tuple(args), expected, param]
                                    for args, expected, rule, param in rows]))
    record = (f"import json as _json\nfor _k, _a, _e, _p in _rapid_p['decode'](_json.loads({data!r})):\n"
              "    _rapid_rec(_k, _a, _e, _p)\n")
    return TestSource(entry, context, record, tuple(rules))


class Digest(str):
    """A value (expected or reported) given by its digest (plain.digest) instead of in full."""


@dataclass(frozen=True)
class Check:
    rule: Rule
    args: tuple
    expected: object
    param: object = None

    @cached_property
    def digest(self) -> str | None:
        return _digest(self.expected)


def _digest(value) -> str | None:
    if type(value) is Digest:
        return str(value)
    try:
        text = quick_canon(value)
        return sha_of(canon(value) if text is None else text)
    except (ValueError, TypeError, RecursionError):
        return None


# -- digests of large values ---------------------------------------------------------------------
# These functions run outside (on decoded values) and are pasted into the jail programs (`jail_plain`):
# self-contained, standard library only. `canon` gives one text for all values that Python's == calls
# equal (1, 1.0 and True; a set and a frozenset; dicts in any order) and different texts otherwise (NaN,
# which equals nothing, raises ValueError); for a tree of lists and tuples of exact ints, strs and None
# that text is the value's repr, so `quick_canon` gets it from repr() and two C-speed type scans instead
# of a Python call per element (MBPP+'s largest outputs, Mbpp/630's nested lists of ints, are such trees).
def canon(v) -> str:
    t = type(v)
    if t is int or t is str or v is None or t is bytes:
        return repr(v)
    if t is bool:
        return "1" if v else "0"
    if t is float:
        if v != v:
            raise ValueError("NaN has no canonical form")
        return repr(int(v)) if v.is_integer() else repr(v)
    if t is list:
        return "[" + ", ".join(map(canon, v)) + "]"
    if t is tuple:
        return "(" + ", ".join(map(canon, v)) + ("," if len(v) == 1 else "") + ")"
    if t is set or t is frozenset:
        return "s{" + ", ".join(sorted(map(canon, v))) + "}"
    if t is dict:
        return "d{" + ", ".join(sorted(canon(k) + ": " + canon(x) for k, x in v.items())) + "}"
    if t is complex:
        return canon(v.real) if v.imag == 0 else "c(" + canon(v.real) + ", " + canon(v.imag) + ")"
    raise TypeError(f"not plain data: {t.__name__}")


def quick_canon(v) -> str | None:
    """canon(v) when v is a list/tuple of exact ints, strs and None, or a list/tuple of such lists/tuples;
    None otherwise (then canon decides)."""
    import itertools

    if type(v) is not list and type(v) is not tuple:
        return None
    leaves = {int, str, type(None)}
    kinds = set(map(type, v))
    if not kinds <= leaves:
        if not kinds <= {list, tuple} or not set(map(type, itertools.chain.from_iterable(v))) <= leaves:
            return None
    return repr(v)


def sha_of(text: str) -> str:
    from hashlib import sha256  # imported here: a jail run that never needs it does not pay for it

    return sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def size_and_digest(v) -> tuple[int, str]:
    """(length of canon(v), its sha256) of a plain value in the jail; ValueError for NaN."""
    text = quick_canon(v)
    if text is None:
        text = canon(v)
    return len(text), sha_of(text)


@cache
def jail_plain() -> str:
    """plain.py's code and the digest functions above, for pasting into a jail program."""
    import inspect

    return plain.source() + "\n\n" + "\n\n".join(inspect.getsource(f) for f in (canon, quick_canon, sha_of,
                                                                                 size_and_digest))


@dataclass(frozen=True)
class Suite:
    """The checks of one problem (empty with `error` set when the reference run failed) and the gold
    solution's seconds on each (from the reference run; None when it did not report them)."""

    checks: tuple[Check, ...]
    error: str | None = None
    times: tuple[float, ...] | None = None

    def input_limits(self) -> tuple[float, ...] | None:
        """EvalPlus's limit per input: max(MIN_INPUT_S, GOLD_FACTOR x the gold solution's time on it)."""
        if self.times is None or len(self.times) != len(self.checks):
            return None
        return tuple(max(MIN_INPUT_S, GOLD_FACTOR * t) for t in self.times)

    def run_limit(self) -> float | None:
        """The wall-clock limit of a whole candidate run, enforced from outside: the sum of the per-input
        limits, at most TASK_CAP_S (EvalPlus's cap) or GOLD_FACTOR x the gold solution's whole time if that
        is more (a gold solution that needs 30 s on this machine keeps its factor's room), plus RUN_EXTRA_S."""
        limits = self.input_limits()
        if limits is None:
            return None
        return min(max(TASK_CAP_S, GOLD_FACTOR * sum(self.times)), sum(limits)) + RUN_EXTRA_S


# -- programs ----------------------------------------------------------------------------------
# Both run after other code in one module (the candidate's, or the gold solution). Their own names
# live in a separate namespace, so a candidate defining `encode` or `json` does not break them.
_CALLER = """
import json as _json, os as _os, signal as _signal, sys as _sys, time as _time
_p = {}
exec(PLAIN, _p)
_fn = NS.get(ENTRY)
_out, _times = [], []
_clock = _time.perf_counter


class _Late(BaseException):
    pass


def _late(_sig, _frame):
    raise _Late()


if LIMITS:  # each call gets its own limit (EvalPlus's); the whole run's limit is enforced from outside
    _signal.signal(_signal.SIGALRM, _late)
class _Swallow:  # what the function prints is no part of its answer: thrown away, as EvalPlus does
    def write(self, text):
        return len(text)

    def flush(self):
        pass


# nor may it split the results line, or fill the sandbox's capped output files
(_stdout, _stderr), _sys.stdout, _sys.stderr = (_sys.stdout, _sys.stderr), _Swallow(), _Swallow()
for _i, (_args, _observe, _exact) in enumerate(_p["decode"](_json.loads(CALLS))):
    _limit = LIMITS[_i] if LIMITS else 0
    try:
        _t = _clock()
        try:
            if _limit:
                _signal.setitimer(_signal.ITIMER_REAL, _limit)
            _v = _fn(*_args)
        finally:
            if _limit:
                _signal.setitimer(_signal.ITIMER_REAL, 0)
            _times.append(_clock() - _t)
        if _limit and _times[-1] > _limit:  # the function held off the alarm
            raise _Late()
        if _observe == "truth":
            _v = bool(_v)
        elif _observe == "not_none":
            _v = _v if isinstance(_v, bool) else _v is not None
        _quick = None
        if _exact:  # a plain tree of ints/strs: its digest needs no encoding
            try:
                _quick = _p["quick_canon"](_v)
            except ValueError:  # an int too long for repr
                pass
        if _quick is not None and len(_quick) > BIG:
            _out.append([2, _p["sha_of"](_quick)])
            continue
        _v = _p["encode"](_v)
        if _exact and _quick is None:  # compared exactly: if it is large, its digest says as much in 64 characters
            try:
                _size, _digest = _p["size_and_digest"](_p["decode"](_v))
                if _size > BIG:
                    _out.append([2, _digest])
                    continue
            except ValueError:  # NaN
                pass
        _out.append([1, _v])
    except _Late:
        _out.append([0, "timeout: over " + str(_limit) + " s"])
        break
    except BaseException as _e:  # SystemExit included: exiting inside a call fails the call
        _out.append([0, type(_e).__name__ + ": " + str(_e)[:200]])
        break  # the first failing call decides; the rest would only cost time
_sys.stdout, _sys.stderr = _stdout, _stderr
_sys.stdout.flush()
_data = ("\\n" + MARK + _json.dumps(_out, separators=(",", ":")) + "\\n").encode()
while _data:
    _data = _data[_os.write(1, _data):]
"""

_RECORDER = """
import random as _random
_random.seed(0)  # tests that draw random inputs get the same ones every time; they are cached anyway
_rapid_checks = []
_rapid_p = {}
exec(PLAIN, _rapid_p)


def _rapid_rec(k, args, expected, param=None):
    digest = 0
    if EXACT[k]:  # a large expected value is kept as its digest (the candidate's is compared by digest too)
        try:
            quick = _rapid_p["quick_canon"](expected)
            if quick is not None and len(quick) > BIG:
                expected, digest = _rapid_p["sha_of"](quick), 1
            elif quick is None:
                size, hexdigest = _rapid_p["size_and_digest"](_rapid_p["decode"](_rapid_p["encode"](expected)))
                if size > BIG:
                    expected, digest = hexdigest, 1
        except ValueError:
            pass
    if not digest:
        expected = _rapid_p["encode"](expected)
    _rapid_checks.append([k, _rapid_p["encode"](tuple(args)), expected, _rapid_p["encode"](param), digest])
"""

assert f"def {RECORD}(" in _RECORDER  # the name the converted tests call

_REFERENCE_END = """
import json as _json
_calls = _json.dumps(_rapid_p["encode"]([[_rapid_p["decode"](c[1]), OBSERVE[c[0]], EXACT[c[0]]] \
for c in _rapid_checks]))
_ns = {"NS": globals(), "ENTRY": ENTRY, "CALLS": _calls, "PLAIN": PLAIN, "MARK": MARK, "BIG": BIG, "LIMITS": None}
print(MARK + _json.dumps(_rapid_checks, separators=(",", ":")))
exec(CALLER, _ns)
print(TIMES + _json.dumps(_ns["_times"]))
"""


def _constants(**values) -> str:
    return "".join(f"{k} = {v!r}\n" for k, v in values.items())


def reference_program(src: TestSource) -> str:
    """Gold solution + recording test code: prints the recorded checks, then the gold outputs."""
    head = _constants(PLAIN=jail_plain(), MARK=MARK, EXACT=[r.exact for r in src.rules], BIG=BIG)
    tail = _constants(ENTRY=src.entry, CALLER=_CALLER, OBSERVE=[r.observe for r in src.rules], TIMES=TIMES)
    return "\n".join([head + _RECORDER, src.context, "", src.record, "", tail + _REFERENCE_END])


def candidate_program(code: str, entry: str, checks: tuple[Check, ...], limits: tuple[float, ...] | None = None) -> str:
    """The candidate's code followed by the caller: argument tuples go in, return values come out.
    `limits`: seconds per call (a call over its limit fails the run: EvalPlus's per-input limits)."""
    calls = json.dumps(plain.encode([[c.args, c.rule.observe, c.rule.exact] for c in checks]))
    caller = _constants(ENTRY=entry, CALLS=calls, PLAIN=jail_plain(), MARK=MARK, BIG=BIG,
                        LIMITS=list(limits) if limits else None) + _CALLER
    return f"{code}\n\n\nexec({caller!r}, {{'NS': globals()}})\n"


# -- reading what came back --------------------------------------------------------------------
def _lines(stdout: str) -> list[list]:
    """Every results line, parsed as JSON (only the structure; values are decoded by the caller)."""
    found = []
    for line in stdout.split("\n"):
        if line.startswith(MARK):
            try:
                found.append(json.loads(line[len(MARK):]))
            except (ValueError, RecursionError):
                found.append(None)
    return found


def reported_values(stdout: str, n: int) -> list | None:
    """The n values a candidate run reported (a Digest for a large exactly-compared one), or None when
    it did not report all of them as plain data."""
    lines = _lines(stdout)
    if not lines or type(lines[-1]) is not list or len(lines[-1]) != n:
        return None
    values = []
    for item in lines[-1]:
        if type(item) is not list or len(item) != 2 or item[0] not in (1, 2):
            return None
        if item[0] == 2:
            if type(item[1]) is not str:
                return None
            values.append(Digest(item[1]))
            continue
        try:
            values.append(plain.decode(item[1]))
        except (ValueError, TypeError, RecursionError):
            return None
    return values


def parse_reference(stdout: str, rules: tuple[Rule, ...]) -> Suite:
    """The checks a reference run recorded, kept only if the gold solution passes all of them."""
    lines = _lines(stdout)
    if len(lines) < 2 or type(lines[-2]) is not list:
        return Suite((), "the reference run printed no checks")
    try:
        checks = tuple(Check(rules[k], plain.decode(a), Digest(e) if d else plain.decode(e), plain.decode(p))
                       for k, a, e, p, d in lines[-2])
    except (ValueError, TypeError, IndexError) as e:
        return Suite((), f"the reference run printed malformed checks ({e})")
    if not checks:
        return Suite((), "the tests recorded no checks")
    gold = reported_values(stdout, len(checks))
    if gold is None:
        return Suite((), "the gold solution did not return plain data on every check")
    failed = [i for i, (c, v) in enumerate(zip(checks, gold, strict=True))
              if c.rule.compare != "holds" and not passes(c, v)]
    if failed:
        return Suite((), f"the gold solution fails {len(failed)} of {len(checks)} checks (first: {failed[0]})")
    return Suite(checks, times=_gold_times(stdout, len(checks)))


def _gold_times(stdout: str, n: int) -> tuple[float, ...] | None:
    lines = [line for line in stdout.split("\n") if line.startswith(TIMES)]
    try:
        times = json.loads(lines[-1][len(TIMES):]) if lines else None
    except ValueError:
        return None
    if type(times) is not list or len(times) != n or not all(type(t) is float and t >= 0 for t in times):
        return None
    return tuple(times)


def judge(suite: Suite, values: list | None, holds: list[bool] | None = None) -> bool:
    """The verdict on a run's reported values; `holds`: the property checks' results, in order (from
    `holds_program`)."""
    if suite.error or not suite.checks or values is None:
        return False
    holds = iter(holds or [])
    return all(next(holds, False) if c.rule.compare == "holds" else passes(c, v)
               for c, v in zip(suite.checks, values, strict=True))


def verdict(stdout: str, suite: Suite) -> bool:
    return judge(suite, reported_values(stdout, len(suite.checks)))


_HOLDS = """
import json as _json
_p = {}
exec(PLAIN, _p)
_ok = []
for _setup, _predicate, _var, _env, _value in _p["decode"](_json.loads(ITEMS)):
    _ns = dict(globals())
    try:
        exec(_setup, _ns)
        _ns.update(_env)
        _ns[_var] = _value
        _ok.append(bool(eval(_predicate, _ns)))
    except Exception:
        _ok.append(False)
print(MARK + _json.dumps(_ok))
"""


def holds_program(context: str, checks: tuple[Check, ...], values: list) -> str:
    """The property checks (rule "holds") evaluated on reported values, in a run that holds only the
    dataset's code (`context`) and the values as plain data: no candidate code is in that process."""
    items = [[c.rule.setup, c.rule.predicate, c.rule.var, c.expected, v]
             for c, v in zip(checks, values, strict=True) if c.rule.compare == "holds"]
    return f"{context}\n\n{_constants(PLAIN=plain.source(), MARK=MARK, ITEMS=json.dumps(plain.encode(items)))}{_HOLDS}"


def holds_results(stdout: str, n: int) -> list[bool] | None:
    lines = _lines(stdout)
    ok = lines[-1] if lines else None
    return ok if type(ok) is list and len(ok) == n and all(type(x) is bool for x in ok) else None


# -- comparison rules (pure, on plain data only) -------------------------------------------------
def passes(check: Check, out) -> bool:
    """Whether one reported value satisfies its check. Any error (an unhashable value for set(),
    a string where a number belongs) is a failure."""
    rule, exp = check.rule, check.expected
    if rule.compare == "holds":  # decided by holds_program, never by the reported value alone
        return False
    if type(out) is Digest or type(exp) is Digest:  # a large exactly-compared value: compare digests
        return rule.exact and check.digest is not None and _digest(out) == check.digest
    try:
        if rule.compare == "mbpp":
            return mbpp_close(out, exp, check.param, as_set=rule.wrap == "set", oracle=rule.oracle, args=check.args)
        if rule.wrap:
            out = {"set": set, "sorted": sorted, "list": list, "tuple": tuple, "frozenset": frozenset}[rule.wrap](out)
        if rule.compare == "eq":
            return bool(out == exp)
        if rule.compare == "is":
            return out is exp
        if rule.compare == "abs_lt":
            return bool(abs(out - exp) < check.param)
        if rule.compare == "isclose":
            return math.isclose(out, exp, **check.param)
    except Exception:
        return False
    raise ValueError(f"unknown comparison {rule.compare!r}")


def _floats(x) -> bool:
    """A float, or a NON-EMPTY list/tuple of floats (EvalPlus's is_floats; the data set's copy of it
    also calls `[]` floats, which is how `[0]` passed for `[]`)."""
    return type(x) is float or (type(x) in (list, tuple) and len(x) > 0 and all(type(i) is float for i in x))


def _surface_area(base_edge, height):
    """Mbpp/581's second reading (EvalPlus's _special_oracle.py): `height` is the pyramid's height, not
    its slant height."""
    slant = math.sqrt((base_edge / 2) ** 2 + height ** 2)
    return round(base_edge ** 2 + 2 * base_edge * slant)


def _digit_distance(a, b):
    """Mbpp/558's second reading (EvalPlus): the numbers are zero-padded to the same length first."""
    x, y = str(a), str(b)
    width = max(len(x), len(y))
    return sum(abs(int(p) - int(q)) for p, q in zip(x.zfill(width), y.zfill(width), strict=True))


# EvalPlus's special oracles for MBPP+, keyed like EvalPlus by the function's name (evalplus/eval/
# __init__.py, unsafe_execute): what else counts as an exact match on one input.
ORACLES = {
    "are_equivalent": lambda out, exp, args, atol: True,  # Mbpp/164: any returned value
    "sum_div": lambda out, exp, args, atol: out == 0,  # Mbpp/295
    "surface_Area": lambda out, exp, args, atol: abs(out - _surface_area(*args)) <= atol,  # Mbpp/581
    "digit_distance_nums": lambda out, exp, args, atol: out == _digit_distance(*args),  # Mbpp/558
}


def mbpp_close(out, exp, atol: float, as_set: bool = False, oracle: str | None = None, args: tuple = ()) -> bool:
    """EvalPlus's verdict on one MBPP+ input (evalplus/eval/__init__.py, unsafe_execute; the data set's
    own `assertion` helper is the same without the type and length checks):

    - an exact match (`out == exp`; for the set problems `set(out) == set(exp)`; for the special-oracle
      problems also the oracle's second reading) passes;
    - otherwise, when the expected value is a float or a non-empty list/tuple of floats (tolerance at
      least 1e-6) or the problem gives a tolerance: the returned value must have exactly the expected
      type, for a list/tuple the expected length, and be numpy.allclose to it (rtol 1e-7, atol);
    - anything else fails.
    """
    exact = bool(out == exp)
    if oracle is not None:
        exact = exact or bool(ORACLES[oracle](out, exp, args, atol))
    elif as_set:
        exact = set(out) == set(exp)
    if exact:
        return True
    if atol == 0 and _floats(exp):
        atol = 1e-6
    if atol == 0 or type(out) is not type(exp):
        return False
    if type(exp) in (list, tuple) and len(out) != len(exp):
        return False
    import numpy as np

    return bool(np.allclose(out, exp, rtol=1e-07, atol=atol))
