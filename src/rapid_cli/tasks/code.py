"""Code tasks: the completion's function is called in the sandbox; the verdict is taken outside.

A subclass gives the candidate's code (`program`) and the problem's tests as a `TestSource`
(`test_source`: the gold solution plus test code that records checks; see rewards/verdict.py). The
checks are recorded once per problem by a reference run of the gold solution in the sandbox and
cached under `<cache>/code-checks/`. Each completion then runs in the sandbox with the argument
tuples only; its return values come back as plain data and are compared outside with the expected
values. A problem whose tests cannot be converted is left out of the splits with a warning; one
whose reference run fails scores 0 for every completion, also with a warning. A round's programs
run in parallel (sandbox.run_many).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types

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

# How much of a run's stdout the verdict reads. The largest MBPP+ reference output is a few MB
# (inputs, expected values and gold outputs); a candidate reports about a third of that.
REFERENCE_CHARS = 32 << 20
CANDIDATE_CHARS = 4 << 20


class CodeTask(Task):
    _sandbox = None
    _reference_sandbox = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._sources: dict[str, TestSource | Unconvertible] = {}
        self._suites: dict[str, Suite] = {}

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

    def splits(self):
        if self._splits is None:
            train, test = super().splits()
            self._splits = (self._convertible(train, "train"), self._convertible(test, "test"))
        return self._splits

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

    def _convertible(self, problems: list[Problem], split: str) -> list[Problem]:
        kept, dropped = self.convertible(problems)
        if dropped:
            from rapid_cli.console import console

            console.print(f"[yellow]{self.name} {split}: left out {len(dropped)} of {len(problems)} problems whose "
                          f"tests cannot be checked outside the sandbox: {'; '.join(dropped)}[/]")
        return kept

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
    def suites(self, problems: list[Problem]) -> list[Suite]:
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
                    from rapid_cli.console import console

                    console.print(f"[yellow]{p.id}: every completion scores 0: {suite.error}[/]")
                else:
                    self._save(self._cache_file(sources[p.id]), o.stdout)
                self._suites[p.id] = suite
        return [self._suites[p.id] for p in problems]

    def _cache_file(self, src: TestSource):
        from rapid_cli.models import cache_root

        return cache_root(self.cache_dir) / "code-checks" / self.name / f"{src.key()}.txt"

    @staticmethod
    def _save(path, text: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(path)

    # -- scoring ------------------------------------------------------------------------------
    def candidate_programs(self, completions: list[str], problems: list[Problem]) -> list[tuple[str | None, Suite]]:
        out = []
        for c, p, suite in zip(completions, problems, self.suites(problems), strict=True):
            program = None if suite.error else candidate_program(self.program(c, p), self.source(p).entry, suite.checks)
            out.append((program, suite))
        return out

    def outcomes(self, completions: list[str], problems: list[Problem]):
        """(sandbox outcome or None when the problem has no valid checks, suite) per completion."""
        pairs = self.candidate_programs(completions, problems)
        runs = self.sandbox.run_many([prog for prog, _ in pairs if prog is not None])
        it = iter(runs)
        return [(next(it) if prog is not None else None, suite) for prog, suite in pairs]

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

    def rewards(self, completions: list[str], problems: list[Problem]) -> list[float]:
        runs = self.outcomes(completions, problems)
        suites = [suite for _, suite in runs]
        values = [reported_values(o.stdout, len(s.checks)) if o is not None else None for o, s in runs]
        sources = [self.source(p) if not s.error else None for p, s in zip(problems, suites, strict=True)]
        holds = self._holds(self.sandbox, sources, suites, values)
        return [float(judge(s, v, h)) for s, v, h in zip(suites, values, holds, strict=True)]

    def reward(self, completion: str, problem: Problem) -> float:
        return self.rewards([completion], [problem])[0]


class AssertsTask(CodeTask):
    """Problems given as assert lines plus a gold solution, from a user's data set (the `code_tests`
    reward function, rewards/library.py): meta `tests` (assert lines), `imports`; answer = the gold code.
    The function under test is the first one an assert calls."""

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

    def __init__(self, tests: str = "tests", solution: str = "solution", imports: str = "imports", reward_cfg=None):
        self.columns = (tests, solution, imports)
        self.task = AssertsTask(None, reward_cfg=reward_cfg)
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
        return self.task.rewards([text_of(c) for c in completions], problems)
