"""Code tasks: the completion's function is called in the sandbox; the verdict is taken outside.

A CodeChecks subclass (a CodeTask, or the `code_tests` reward function's AssertsChecks) gives the
candidate's code (`program`) and the problem's tests as a `TestSource` (`test_source`: the gold
solution plus test code that records checks; see rewards/verdict.py). The checks are recorded once per
problem by a reference run of the gold solution in the sandbox and cached under `<cache>/code-checks/`.
Each completion then runs in the sandbox with the argument tuples only; its return values come back as
plain data and are compared outside with the expected values. A CodeTask leaves out of its splits, with
a warning, a problem whose tests cannot be converted and one whose gold solution does not pass within
the limits (its reference run fails, or the gold solution run as a candidate scores 0), named in one line
when the splits are made (the outcome is cached beside the checks, so later starts read it). A round's
programs run in parallel.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import types
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from rapid_cli.cache import cache_root
from rapid_cli.rewards.asserts import Unconvertible
from rapid_cli.rewards.library import text_of
from rapid_cli.rewards.verdict import (
    Suite,
    TestSource,
    candidate_program,
    holds_program,
    holds_results,
    judge,
    parse_reference,
    reference_program,
    reported_values,
)
from rapid_cli.tasks.base import Task
from rapid_cli.types import Problem

if TYPE_CHECKING:
    from rapid_cli.config import RewardConfig, TaskConfig

# How much of a run's stdout the verdict reads. The largest MBPP+ reference output is a few MB
# (inputs, expected values and gold outputs); a candidate reports about a third of that.
REFERENCE_CHARS = 32 << 20
CANDIDATE_CHARS = 4 << 20


class CodeChecks:
    """The verdict machinery of a code task, without the task's data or prompts: the problems' tests
    converted, their checks recorded and cached, candidates run in the sandbox and judged. It needs only
    the sandbox settings (`reward_cfg`, the run's `reward` config) and the cache directory; `name` names
    its folder in the cache. CodeTask is a Task with these checks; `code_tests` uses them alone."""

    name = "code"
    _sandbox = None
    _reference_sandbox = None
    # EvalPlus's per-input time limits, scaled from the gold solution's time on each input (MBPP+); otherwise
    # reward.timeout_s limits a candidate's whole run
    per_input_limits = False

    def __init__(self, reward_cfg: RewardConfig | None = None, cache_dir: str | None = None):
        if reward_cfg is None:
            from rapid_cli.config import RewardConfig

            reward_cfg = RewardConfig()
        self.reward_cfg = reward_cfg
        self.cache_dir = cache_dir
        self._sources: dict[str, TestSource | Unconvertible] = {}
        self._suites: dict[str, Suite] = {}
        self._timed: dict[float, object] = {}

    def program(self, completion: str, problem: Problem) -> str:
        """The candidate's code (it must define the function the tests call)."""
        raise NotImplementedError

    def test_source(self, problem: Problem) -> TestSource:
        """The problem's tests in recording form; raises Unconvertible when they cannot be."""
        raise NotImplementedError

    def source(self, problem: Problem) -> TestSource:
        """test_source, converted once per problem (an MBPP+ test script is up to hundreds of KB)."""
        if problem.id not in self._sources:
            try:
                self._sources[problem.id] = self.test_source(problem)
            except Unconvertible as e:
                self._sources[problem.id] = e
        found = self._sources[problem.id]
        if isinstance(found, Unconvertible):
            raise found
        return found

    def convertible(self, problems: list[Problem]) -> tuple[list[Problem], list[str]]:
        """(the problems whose tests convert, '<id> (why not)' for the others)."""
        kept, dropped = [], []
        for p in problems:
            try:
                self.source(p)
                kept.append(p)
            except Unconvertible as e:
                dropped.append(f"{p.id} ({e})")
        return kept, dropped

    # -- sandboxes -----------------------------------------------------------------------------
    def _make_sandbox(self, output_chars: int, timeout_s: float, memory_mb: int, file_mb: int | None = None):
        from rapid_cli.config import RewardConfig
        from rapid_cli.sandbox import make_sandbox

        cfg = types.SimpleNamespace(**{f.name: getattr(self.reward_cfg, f.name)
                                       for f in dataclasses.fields(RewardConfig)})
        cfg.timeout_s, cfg.memory_mb = timeout_s, memory_mb
        sandbox = make_sandbox(cfg)
        # The values come back on stdout: keep all of it (the reference run also writes more than the default cap).
        sandbox.limits = dataclasses.replace(sandbox.limits, output_chars=output_chars,
                                             file_mb=file_mb or sandbox.limits.file_mb)
        return sandbox

    @property
    def sandbox(self):
        if self._sandbox is None:
            self._sandbox = self._make_sandbox(CANDIDATE_CHARS, self.reward_cfg.timeout_s, self.reward_cfg.memory_mb)
        return self._sandbox

    @property
    def reference_sandbox(self):
        """Gold solutions get room (some MBPP+ ones need more than 3 s / 1 GiB on a slow CPU): their
        outputs define the checks once, they are not scored."""
        if self._reference_sandbox is None:
            cfg = self.reward_cfg
            self._reference_sandbox = self._make_sandbox(REFERENCE_CHARS, max(60.0, cfg.timeout_s),
                                                          max(4096, cfg.memory_mb), REFERENCE_CHARS >> 20)
        return self._reference_sandbox

    # -- checks ---------------------------------------------------------------------------------
    def suites(self, problems: list[Problem], warn: bool = True) -> list[Suite]:
        """Each problem's checks: from memory, the cache, or a reference run (all missing ones at once)."""
        sources, todo = {}, []
        for p in problems:
            if p.id in self._suites or p.id in sources:
                continue
            try:
                sources[p.id] = src = self.source(p)
            except Unconvertible as e:
                self._suites[p.id] = Suite((), f"tests cannot be converted: {e}")
                continue
            cached = self._cache_file(src)
            if cached.exists():
                self._suites[p.id] = parse_reference(cached.read_text(), src.rules)
            else:
                todo.append(p)
        if todo:
            outcomes = self.reference_sandbox.run_many([reference_program(sources[p.id]) for p in todo])
            suites = [parse_reference(o.stdout, sources[p.id].rules) for p, o in zip(todo, outcomes, strict=True)]
            gold = [reported_values(o.stdout, len(s.checks)) for o, s in zip(outcomes, suites, strict=True)]
            holds = self._holds(self.reference_sandbox, [sources[p.id] for p in todo], suites, gold)
            for p, o, suite, ok in zip(todo, outcomes, suites, holds, strict=True):
                if not suite.error and ok is not None and not all(ok):
                    suite = Suite((), f"the gold solution fails {ok.count(False)} property checks")
                if suite.error:
                    why = (o.stderr.strip().splitlines() or [o.status])[-1]
                    suite = Suite((), f"{suite.error}: {o.status}, {why}")
                    if warn:
                        from rapid_cli.console import console

                        console.print(f"[yellow]{p.id}: every completion scores 0: {suite.error}[/]")
                else:
                    self._save(self._cache_file(sources[p.id]), o.stdout)
                self._suites[p.id] = suite
        return [self._suites[p.id] for p in problems]

    def gold_fails(self, problems: list[Problem]) -> dict[str, str]:
        """{problem id: why} for the problems whose gold solution does not pass within the limits: its
        reference run (with room) fails, or the gold solution run as a candidate (the candidate's memory
        and time limits) scores 0. One out of time while other runs shared the machine is run once more,
        alone. The outcome is cached per problem and limits, so only problems never checked before cost a run."""
        found, todo = {}, []
        for p in {p.id: p for p in problems}.values():
            f = self._status_file(self.source(p))
            try:
                found[p.id] = json.loads(f.read_text())["why"]
            except (OSError, ValueError, KeyError, TypeError):
                todo.append(p)
        if todo:
            suites = self.suites(todo, warn=False)
            ok = [(p, s) for p, s in zip(todo, suites, strict=True) if not s.error]
            runs = self._judged([self.source(p).context for p, _ in ok], [p for p, _ in ok])
            for i, (passed, o) in enumerate(runs):  # out of time beside other runs: once more, alone
                if not passed and o is not None and _failure(o).startswith("timeout"):
                    runs[i] = self._judged([self.source(ok[i][0]).context], [ok[i][0]])[0]
            why = {p.id: _short(s.error) for p, s in zip(todo, suites, strict=True) if s.error}
            for (p, _), (passed, o) in zip(ok, runs, strict=True):
                if not passed:
                    why[p.id] = f"run as a candidate: {_failure(o)}"
            for p in todo:
                found[p.id] = why.get(p.id)
                self._save(self._status_file(self.source(p)), json.dumps({"why": found[p.id]}))
        return {k: v for k, v in found.items() if v is not None}

    def _cache_file(self, src: TestSource):
        return cache_root(self.cache_dir) / "code-checks" / self.name / f"{src.key()}.txt"

    def _status_file(self, src: TestSource):
        """Whether the gold solution passes within the candidate's limits: depends on those limits too."""
        cfg = self.reward_cfg
        limits = json.dumps([cfg.sandbox, cfg.memory_mb, None if self.per_input_limits else cfg.timeout_s])
        tag = hashlib.sha256(limits.encode()).hexdigest()[:8]
        return self._cache_file(src).with_name(f"{src.key()}.gold-{tag}.json")

    @staticmethod
    def _save(path, text: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(path)

    # -- scoring ------------------------------------------------------------------------------
    def _programs(self, codes: list[str | None], problems: list[Problem]):
        """(candidate program or None when the problem has no valid checks, suite, the run's time limit or None
        for reward.timeout_s) per code."""
        out = []
        for code, p, suite in zip(codes, problems, self.suites(problems), strict=True):
            if suite.error or code is None:
                out.append((None, suite, None))
                continue
            limits = suite.input_limits() if self.per_input_limits else None
            program = candidate_program(code, self.source(p).entry, suite.checks, limits)
            out.append((program, suite, suite.run_limit() if limits else None))
        return out

    def outcomes(self, completions: list[str], problems: list[Problem]):
        """(sandbox outcome or None when the problem has no valid checks, suite) per completion."""
        codes = [None if s.error else self.program(c, p)
                 for c, p, s in zip(completions, problems, self.suites(problems), strict=True)]
        return self._outcomes(codes, problems)

    def _outcomes(self, codes: list[str | None], problems: list[Problem]):
        jobs = self._programs(codes, problems)
        todo = [(prog, limit) for prog, _, limit in jobs if prog is not None]
        run = lambda job: self._sandbox_for(job[1]).run(job[0])  # noqa: E731
        workers = self.sandbox.workers
        if len(todo) <= 1 or workers == 1:
            runs = [run(job) for job in todo]
        else:
            with ThreadPoolExecutor(workers) as pool:
                runs = list(pool.map(run, todo))
        it = iter(runs)
        return [(next(it) if prog is not None else None, suite) for prog, suite, _ in jobs]

    def _sandbox_for(self, timeout_s: float | None):
        """The candidate sandbox, or a copy of it whose whole-run limit (wall clock, and CPU seconds) is
        `timeout_s`: the per-input limits' sum for MBPP+. The copy shares the original's cgroups and
        settings; only its limits differ."""
        if timeout_s is None:
            return self.sandbox
        timeout_s = round(timeout_s, 1)
        if timeout_s not in self._timed:
            timed = copy.copy(self.sandbox)
            timed.limits = dataclasses.replace(self.sandbox.limits, timeout_s=timeout_s)
            self._timed[timeout_s] = timed
        return self._timed[timeout_s]

    def _holds(self, sandbox, sources: list[TestSource], suites: list[Suite], values: list) -> list[list[bool] | None]:
        """Each run's property-check results (None where it has none or reported no values): one extra
        run of dataset code per such completion."""
        todo = [i for i, (s, v) in enumerate(zip(suites, values, strict=True))
                if v is not None and not s.error and any(c.rule.compare == "holds" for c in s.checks)]
        runs = sandbox.run_many([holds_program(sources[i].context, suites[i].checks, values[i]) for i in todo])
        out: list[list[bool] | None] = [None] * len(suites)
        for i, o in zip(todo, runs, strict=True):
            n = sum(c.rule.compare == "holds" for c in suites[i].checks)
            out[i] = holds_results(o.stdout, n) or [False] * n
        return out

    def _judged(self, codes: list[str | None], problems: list[Problem]) -> list[tuple[bool, object]]:
        """(passed, sandbox outcome or None) per candidate code. A run stopped at its time limit fails
        whatever it printed: the per-input limits are kept by the program's own timer, the whole-run
        limit from outside."""
        runs = self._outcomes(codes, problems)
        suites = [suite for _, suite in runs]
        values = [reported_values(o.stdout, len(s.checks)) if o is not None and o.status != "timeout" else None
                  for o, s in runs]
        sources = [self.source(p) if not s.error else None for p, s in zip(problems, suites, strict=True)]
        holds = self._holds(self.sandbox, sources, suites, values)
        return [(judge(s, v, h), o) for s, v, h, (o, _) in zip(suites, values, holds, runs, strict=True)]

    def rewards(self, completions: list[str], problems: list[Problem]) -> list[float]:
        codes = [None if s.error else self.program(c, p)
                 for c, p, s in zip(completions, problems, self.suites(problems), strict=True)]
        return [float(ok) for ok, _ in self._judged(codes, problems)]

    def reward(self, completion: str, problem: Problem) -> float:
        return self.rewards([completion], [problem])[0]


class CodeTask(CodeChecks, Task):
    """A task whose completions are programs, judged by CodeChecks. Its splits leave out the problems whose
    tests cannot be converted and those whose gold solution does not pass within the limits."""

    def __init__(self, cfg: TaskConfig, seed: int = 0, cache_dir: str | None = None,
                 reward_cfg: RewardConfig | None = None):
        Task.__init__(self, cfg, seed=seed, cache_dir=cache_dir, reward_cfg=reward_cfg)
        CodeChecks.__init__(self, self.reward_cfg, cache_dir)

    def splits(self):
        if self._splits is None:
            train, test = super().splits()
            train, test = self._convertible(train, "train"), self._convertible(test, "test")
            bad = self.gold_fails([*train, *test])
            if bad:
                from rapid_cli.console import warn

                every = list({p.id: p for p in [*train, *test]})
                warn(f"task={self.name}: {len(bad)} of {len(every)} problems left out: their gold solution does not "
                     f"pass within the limits ({'; '.join(f'{k}: {v}' for k, v in bad.items())})")
                train, test = [p for p in train if p.id not in bad], [p for p in test if p.id not in bad]
            self._splits = (train, test)
        return self._splits

    def _convertible(self, problems: list[Problem], split: str) -> list[Problem]:
        kept, dropped = self.convertible(problems)
        if dropped:
            from rapid_cli.console import console

            console.print(f"[yellow]{self.name} {split}: left out {len(dropped)} of {len(problems)} problems whose "
                          f"tests cannot be checked outside the sandbox: {'; '.join(dropped)}[/]")
        return kept


def _short(error: str) -> str:
    return error if len(error) <= 160 else error[:157] + "..."


def _failure(o) -> str:
    """Why a candidate run did not pass: the call that failed, as the run reported it, or how it ended."""
    from rapid_cli.rewards.verdict import MARK

    if o is None:
        return "no run"
    if o.status in ("timeout", "killed"):
        return f"{o.status} after {o.seconds:.1f} s" + (" (the memory limit?)" if o.status == "killed" else "")
    for line in reversed(o.stdout.split("\n")):
        if line.startswith(MARK):
            try:
                last = json.loads(line[len(MARK):])[-1]
                return _short(str(last[1])) if last[0] == 0 else "a wrong value"
            except (ValueError, IndexError, TypeError, KeyError):
                break
    return _short((o.stderr.strip().splitlines() or [o.status])[-1])


class AssertsChecks(CodeChecks):
    """The checks of the `code_tests` reward function: problems given as assert lines plus a gold solution,
    from a user's data set: meta `tests` (assert lines), `imports`; answer = the gold code. The function under
    test is the first one an assert calls."""

    name = "asserts"

    def program(self, completion: str, problem: Problem) -> str:
        from rapid_cli.rewards.code import extract_code

        return "\n".join([*problem.meta["imports"], extract_code(completion)])

    def test_source(self, problem: Problem) -> TestSource:
        import ast

        from rapid_cli.rewards.asserts import record_asserts

        try:
            tree = ast.parse("\n".join(problem.meta["tests"]))
        except SyntaxError as err:
            raise Unconvertible(f"the tests are not Python: {err.msg}, line {err.lineno}") from None
        calls = [n.func.id for a in ast.walk(tree) if isinstance(a, ast.Assert) for n in ast.walk(a)
                 if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id not in _NOT_ENTRY]
        if not calls:
            raise Unconvertible("no assert calls a function")
        record, rules = record_asserts(tree, calls[0])
        return TestSource(calls[0], "\n".join([*problem.meta["imports"], problem.answer]), f"{record}\n", tuple(rules))


_NOT_ENTRY = {"set", "sorted", "list", "tuple", "frozenset", "abs", "len", "isinstance", "bool", "round", "float",
              "int"}


class code_tests:  # noqa: N801 (named in reward.functions like the functions of rewards/library.py)
    """1.0 when the completion's code passes the row's assert tests, judged like mbpp (tasks/code.py): the
    asserts are turned into (arguments, expected value) checks by a reference run of the row's gold
    solution in the sandbox (cached), the candidate's function runs in the sandbox on the arguments
    only, and the values it returns are compared outside. The completion's code is its last ```python
    block (rewards/code.py). Columns, renamable with the constructor's arguments: `tests` (a list of
    assert lines, or one string of them), `solution` (the gold code) and optionally `imports`. The
    sandbox follows `reward.*` (timeout_s, memory_mb, sandbox, ...). Programs of a batch run in parallel
    in the sandbox's own pool, so leave this one out of `reward.pool=process`.
    """

    def __init__(self, tests: str = "tests", solution: str = "solution", imports: str = "imports",
                 reward_cfg: RewardConfig | None = None):
        self.columns = (tests, solution, imports)
        self.checks = AssertsChecks(reward_cfg)
        self.__name__ = "code_tests"

    def __call__(self, completions: list, **columns) -> list[float]:
        tests, solution, imports = self.columns
        for col in (tests, solution):
            if col not in columns:
                raise KeyError(f"code_tests needs the column {col!r}")
        problems = []
        for i, t in enumerate(columns[tests]):
            lines = [t] if isinstance(t, str) else list(t)
            extra = columns.get(imports, [None] * len(completions))[i] or []
            meta = {"tests": lines, "imports": [extra] if isinstance(extra, str) else list(extra)}
            key = json.dumps([meta, str(columns[solution][i])])  # the checks are cached per problem id
            problems.append(Problem(id=hashlib.sha256(key.encode()).hexdigest()[:16], question="",
                                    answer=str(columns[solution][i]), meta=meta))
        return self.checks.rewards([text_of(c) for c in completions], problems)
