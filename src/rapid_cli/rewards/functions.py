"""Reward functions from the config: `reward.functions`, a list of Hydra `_target_` entries with weights.

    reward:
      functions:
        - {_target_: rapid_cli.rewards.numeric_match}                      # a plain function
        - {_target_: my_rewards.format_ok, weight: 0.2}                    # your module (on PYTHONPATH or in .)
        - {_target_: rapid_cli.rewards.format_match, pattern: '<answer>.*</answer>', name: tags}
        - {_target_: my_rewards.Judge, model: small, timeout_s: 30}        # a class: constructed once

A function has TRL's signature, `fn(completions, **columns) -> list[float]`: `completions` are the B
texts of a round, and every column of the data set comes by name as a list of B values, with
`prompts` (the rendered prompt, or the chat when the data has a `messages` column), `answer` (the
`task.answer_field` column), `completion_ids` (token ids) and `truncated` (hit max_tokens). A function
with `**kwargs` gets them all; one without gets the ones it names. So reward functions written for TRL's
GRPOTrainer work unchanged; None for a row means "not applicable" and adds nothing to that row's total,
as in TRL.

How an entry becomes a function: the keys `weight` (1.0), `name` (the function's or class's name; the
metric is `reward/<name>`) and `timeout_s` (`reward.function_timeout_s`) are rapid's; the others go
to the target. A function whose first parameter is `completions` is the reward function itself (extra
keys become fixed keyword arguments, like `_partial_`); a class, or any other function (a factory), is
called once with the extra keys and must return the reward function. A class whose constructor takes
`reward_cfg` receives the run's `reward` config (the sandbox settings, for `code_tests`).

The total of a row is the weighted sum. A function that raises, returns the wrong number of values,
or returns something that is not a finite number or None stops the run with one line naming the
function and the row (found by calling it on each row alone); so does one slower than its timeout.
The round is abandoned before its update, so the last checkpoint is the newest state on disk.
"""

from __future__ import annotations

import functools
import inspect
import math
import numbers
import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from rapid_cli.errors import RapidError
from rapid_cli.types import Scores

if TYPE_CHECKING:
    from rapid_cli.config import RewardConfig

# What every call may pass besides the data set's columns (TRL passes prompts and completion_ids too).
EXTRAS = ("prompts", "completion_ids", "truncated")
RAPID_KEYS = ("weight", "name", "timeout_s")


@dataclass
class RewardFunction:
    name: str
    fn: Callable
    weight: float = 1.0
    timeout_s: float | None = None
    params: set[str] | None = None  # the keyword arguments it takes; None: **kwargs, all of them
    required: set[str] = field(default_factory=set)  # those without a default

    def kwargs(self, columns: dict[str, list]) -> dict[str, list]:
        return dict(columns) if self.params is None else {k: v for k, v in columns.items() if k in self.params}


def _signature(fn: Callable) -> tuple[set[str] | None, set[str]]:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin without a signature: give it everything
        return None, set()
    ps = list(sig.parameters.values())
    named = {p.name for p in ps if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    required = {p.name for p in ps if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    takes_all = any(p.kind == p.VAR_KEYWORD for p in ps)
    return (None if takes_all else named - {"completions"}), required - {"completions"}


def _is_reward_function(obj) -> bool:
    if not (inspect.isfunction(obj) or inspect.isbuiltin(obj)):
        return False
    try:
        first = next(iter(inspect.signature(obj).parameters), None)
    except (TypeError, ValueError):
        return False
    return first == "completions"


def _import(target: str, where: str):
    """The object `target` ("module.function", "package.module.Class") names. What is wrong is said exactly, in
    one line: no such module, a syntax error (file and line), an error raised while importing, or no such
    function in the module (with the nearest name). Hydra's get_object logged its own lines in front of that."""
    import importlib

    if os.getcwd() not in sys.path:  # `my_rewards.py` beside you imports, as with `python script.py`
        sys.path.append(os.getcwd())
    parts = target.split(".")
    if len(parts) < 2 or not all(part.isidentifier() for part in parts):
        raise RapidError(f"{where}: _target_={target!r} must be module.function, e.g. my_rewards.format_ok "
                         "(the module my_rewards.py in the current directory or on PYTHONPATH)")
    for i in range(len(parts) - 1, 0, -1):  # the longest prefix that is a module
        module_name = ".".join(parts[:i])
        try:
            obj = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name and (module_name == err.name or module_name.startswith(err.name + ".")):
                continue  # not a module: perhaps a shorter prefix is
            raise RapidError(f"{where}: importing {module_name} failed: {err}") from None  # a module it imports
        except SyntaxError as err:
            raise RapidError(f"{where}: syntax error at {_shown(err.filename or module_name)}:{err.lineno} "
                             f"({err.msg})") from None
        except Exception as err:
            import traceback

            # where it raised: the innermost frame (the module's line, or a library's it called), not importlib's
            frames = [f for f in traceback.extract_tb(err.__traceback__) if not f.filename.startswith("<frozen")]
            at = f" at {_shown(frames[-1].filename)}:{frames[-1].lineno}" if frames else ""
            raise RapidError(f"{where}: importing {module_name} raised {type(err).__name__}{at}: "
                             f"{str(err).splitlines()[0] if str(err) else ''}") from None
        for j, attr in enumerate(parts[i:], start=i):
            if not hasattr(obj, attr):
                import difflib

                owner = ".".join(parts[:j])
                what = "function" if j == len(parts) - 1 else "attribute"
                near = difflib.get_close_matches(attr, [n for n in dir(obj) if not n.startswith("_")], n=1)
                raise RapidError(f"{where}: {owner} has no {what} {attr}"
                                 + (f"; did you mean {owner}.{near[0]}?" if near else "")) from None
            obj = getattr(obj, attr)
        return obj
    raise RapidError(f"{where}: cannot import {target!r}: there is no module {parts[0]}; put {parts[0]}.py in the "
                     "current directory or its directory on PYTHONPATH")


def build_function(entry, where: str, reward_cfg: RewardConfig | None = None,
                   default_timeout: float | None = None) -> RewardFunction:
    """One `reward.functions` entry -> a RewardFunction (see the module docstring)."""
    from omegaconf import DictConfig, OmegaConf

    spec = OmegaConf.to_container(entry, resolve=True) if isinstance(entry, DictConfig) else dict(entry)
    if not isinstance(spec, dict) or "_target_" not in spec:
        raise RapidError(f"{where} needs a _target_, e.g. {{_target_: rapid_cli.rewards.numeric_match, weight: 1.0}}")
    target = spec.pop("_target_")
    rapid = {k: spec.pop(k) for k in RAPID_KEYS if k in spec}
    partial = spec.pop("_partial_", False)
    obj = _import(target, where)
    try:
        if _is_reward_function(obj) or partial:
            fn = functools.partial(obj, **spec) if spec else obj
        elif inspect.isclass(obj) or inspect.isfunction(obj):
            if inspect.isclass(obj) and "reward_cfg" in inspect.signature(obj).parameters and "reward_cfg" not in spec:
                spec["reward_cfg"] = reward_cfg
            fn = obj(**spec)
        elif callable(obj) and not spec:
            fn = obj
        else:
            raise RapidError(f"{where}: {target} is not callable with arguments {sorted(spec)}")
    except RapidError:
        raise
    except Exception as err:
        raise RapidError(f"{where}: building {target}({', '.join(spec)}) failed: {type(err).__name__}: {err}") from None
    if not callable(fn):
        raise RapidError(f"{where}: {target}(...) returned a {type(fn).__name__}, not a reward function")
    base = fn.func if isinstance(fn, functools.partial) else fn
    name = rapid.get("name") or getattr(base, "__name__", None) or type(base).__name__
    params, required = _signature(fn)
    if isinstance(fn, functools.partial):
        required -= set(fn.keywords)
    weight = rapid.get("weight", 1.0)
    if not isinstance(weight, numbers.Real) or isinstance(weight, bool):
        raise RapidError(f"{where}: weight={weight!r} must be a number")
    timeout = rapid.get("timeout_s", default_timeout)
    return RewardFunction(str(name), fn, float(weight), None if timeout is None else float(timeout), params, required)


def build_functions(entries, reward_cfg: RewardConfig | None = None) -> list[RewardFunction]:
    """Every `reward.functions` entry; names made unique (a second `numeric_match` becomes `numeric_match_2`)."""
    timeout = getattr(reward_cfg, "function_timeout_s", None)
    out: list[RewardFunction] = []
    for i, entry in enumerate(entries):
        f = build_function(entry, f"reward.functions[{i}]", reward_cfg, timeout)
        taken, k = {g.name for g in out}, 2
        base = f.name
        while f.name in taken:
            f.name, k = f"{base}_{k}", k + 1
        out.append(f)
    return out


def check_columns(functions: list[RewardFunction], columns: set[str], source: str) -> None:
    """Before training: every argument a function needs is a column or one of EXTRAS."""
    for f in functions:
        missing = sorted(f.required - columns - set(EXTRAS))
        if missing:
            raise RapidError(f"reward function {f.name} needs column {missing[0]!r}, which {source} does not have "
                             f"(columns: {', '.join(sorted(columns))}); rename it with task.answer_field / "
                             "task.prompt_field or fix the data")


# -- calling ----------------------------------------------------------------------------------------------------

def _call_with_timeout(fn: Callable, kwargs: dict, timeout: float | None):
    """fn(**kwargs) here, or in a daemon thread when it has a time limit (a thread cannot be killed: an
    overrunning function is left behind and the run stops)."""
    if timeout is None:
        return fn(**kwargs)
    box: dict = {}

    def run():
        try:
            box["value"] = fn(**kwargs)
        except BaseException as err:  # handed to the caller
            box["error"] = err

    t = threading.Thread(target=run, daemon=True, name="reward-function")
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise TimeoutError
    if "error" in box:
        raise box["error"]
    return box["value"]


def _checked(f: RewardFunction, out, n: int, labels: list[str], offset: int = 0) -> list[float | None]:
    if hasattr(out, "tolist"):  # numpy array or tensor
        out = out.tolist()
    if not isinstance(out, (list, tuple)):
        raise RapidError(f"reward function {f.name} returned a {type(out).__name__}; it must return a list of {n} "
                         f"floats (one per completion)")
    if len(out) != n:
        raise RapidError(f"reward function {f.name} returned {len(out)} values for {n} completions ({labels[offset]} "
                         f".. {labels[offset + n - 1]}); it must return one per completion")
    values: list[float | None] = []
    for i, v in enumerate(out):
        if v is not None and (not isinstance(v, numbers.Real) or not math.isfinite(float(v))):
            raise RapidError(f"reward function {f.name} returned {v!r} for {labels[offset + i]}; each value must be a "
                             "finite number (or None: not applicable)")
        values.append(None if v is None else float(v))
    return values


def _slice(columns: dict[str, list], rows: range) -> dict[str, list]:
    return {k: v[rows.start : rows.stop] for k, v in columns.items()}


def _run(f: RewardFunction, completions: list, columns: dict[str, list], labels: list[str], rows: range):
    """f on `rows` of the batch, checked; a failure names the function and the first row that fails alone."""
    n = len(rows)
    kwargs = {"completions": completions[rows.start : rows.stop], **f.kwargs(_slice(columns, rows))}
    try:
        out = _call_with_timeout(f.fn, kwargs, f.timeout_s)
    except TimeoutError:
        raise RapidError(f"reward function {f.name} took more than {f.timeout_s:g} s for {n} completions "
                         f"({labels[rows.start]} .. {labels[rows.stop - 1]}); raise its timeout_s (or "
                         "reward.function_timeout_s), or speed it up") from None
    except (Exception, SystemExit) as err:  # sys.exit() in a reward would end a whole sweep, unrecorded
        what = (f"called sys.exit({err.code!r})" if isinstance(err, SystemExit) else
                f"raised {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
        raise RapidError(f"reward function {f.name} {what} on "
                         f"{_failing_row(f, completions, columns, labels, rows)}") from None
    return _checked(f, out, n, labels, rows.start)


def _failing_row(f: RewardFunction, completions: list, columns: dict[str, list], labels: list[str], rows: range) -> str:
    for i in rows:
        try:
            _call_with_timeout(f.fn,
                               {"completions": completions[i : i + 1], **f.kwargs(_slice(columns, range(i, i + 1)))},
                               f.timeout_s)
        except (Exception, SystemExit):
            return labels[i]
    return f"{labels[rows.start]} .. {labels[rows.stop - 1]} (together; each row alone passes)"


def score(functions: list[RewardFunction], completions: list, columns: dict[str, list], labels: list[str],
          pool=None, chunks: int = 1) -> Scores:
    """Every function on the batch (`columns`: name -> B values; `labels[i]`: where row i comes from, for
    errors). With a `pool` (concurrent.futures executor), the functions, each on `chunks` slices of the
    rows, run in parallel."""
    B = len(completions)
    if pool is None:
        parts = {f.name: _run(f, completions, columns, labels, range(B)) for f in functions}
    else:
        size = -(-B // max(1, chunks)) if B else 1
        jobs = {f.name: [pool.submit(_run, f, completions, columns, labels, range(s, min(B, s + size)))
                         for s in range(0, B, size)] for f in functions}
        parts = {name: [v for job in js for v in _result(job, pool, functions)] for name, js in jobs.items()}
    total = [sum(f.weight * parts[f.name][i] for f in functions if parts[f.name][i] is not None) for i in range(B)]
    return Scores(total, parts)


def _result(job, pool, functions):
    """A pool job's values; a timeout inside a process-pool worker cannot be reached from here, so the
    longest function timeout bounds the wait and the pool's processes are killed when it passes."""
    limits = [f.timeout_s for f in functions if f.timeout_s is not None]
    import concurrent.futures

    try:
        return job.result(timeout=max(limits) * 2 + 5 if limits else None)
    except concurrent.futures.TimeoutError:
        for proc in list(getattr(pool, "_processes", {}).values()):
            proc.kill()
        raise RapidError(f"reward functions did not finish within their timeouts ({max(limits):g} s) in the process "
                         "pool; raise timeout_s or use reward.pool=thread") from None


def pool_size(workers: int | None) -> int:
    return workers or os.cpu_count() or 1


def make_pool(kind: str, workers: int | None):
    """None, or an executor for `reward.pool` (thread: for functions that wait on I/O or release the GIL;
    process: for pure-Python CPU work; functions must then be importable, as Hydra targets are)."""
    if kind == "none":
        return None
    import concurrent.futures

    workers = pool_size(workers)
    if kind == "thread":
        return concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="reward")
    import multiprocessing

    # spawn: a forked copy of a process holding torch threads and a vLLM engine can deadlock
    return concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))


def part_metrics(parts: dict[str, list[float | None]]) -> dict[str, float]:
    """`reward/<name>`: each function's mean over the rows it applied to (rows it returned None for are left out).

    >>> part_metrics({"format": [1.0, 0.0, None], "never": [None]})
    {'reward/format': 0.5}
    """
    out = {}
    for name, values in parts.items():
        got = [v for v in values if v is not None]
        if got:
            out[f"reward/{name}"] = sum(got) / len(got)
    return out


def _shown(place: str) -> str:
    """A source file as the user knows it: relative to the current directory when it lies under it."""
    if os.path.isabs(place) and os.path.realpath(place).startswith(os.path.realpath(os.getcwd()) + os.sep):
        return os.path.relpath(place)
    return place
