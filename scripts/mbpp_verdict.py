r"""MBPP+ verdicts: gold solutions and mutants under rapid's EvalPlus rule and the data set's own rule.

    .venv/bin/python scripts/mbpp_verdict.py ../shared/data/mbppplus/MbppPlus-OriginFmt.jsonl.gz
    .venv/bin/python scripts/mbpp_verdict.py FILE --timeout 90 --memory 4096   # the tests' roomy limits
    .venv/bin/python scripts/mbpp_verdict.py FILE --time Mbpp/630   # what reporting the values costs

rapid judges an MBPP+ input the way EvalPlus does (rewards/verdict.py, mbpp_close: type- and
length-aware, EvalPlus's float tolerance and special oracles); the data set's own test script compares
with numpy.allclose and no type or length check (`dataset_close` below, rapid's rule before issue 27).
Prints:
1. gold: how many of the problems' gold solutions earn 1 under the chosen limits (reward.timeout_s,
   reward.memory_mb), and which do not and why;
2. value mutants (no sandbox): each problem's expected values changed in one way ([0] for [], [x, x] for
   [x], a tuple for a list, a list for a tuple), judged by both rules: a problem's mutant passes when
   every mutated check passes;
3. program mutants (sandbox): the gold function wrapped so that its return value is changed the same way,
   run like a completion and judged by both rules.
Nothing is downloaded; the file is the data set (jsonl/jsonl.gz/parquet), never committed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from rapid_cli.rewards.verdict import Digest, _floats, judge, passes, reported_values  # noqa: E402


def dataset_close(out, exp, atol, as_set=False) -> bool:
    """The data set's `assertion` helper (rapid's rule before issue 27): its is_floats calls [] floats."""
    import numpy as np

    if atol == 0 and (_floats(exp) or (type(exp) in (list, tuple) and not exp)):
        atol = 1e-6
    if as_set:
        out, exp = set(out), set(exp)
    if out != exp and atol != 0:
        return bool(np.allclose(out, exp, rtol=1e-07, atol=atol))
    return bool(out == exp)


def old_passes(check, out) -> bool:
    if check.rule.compare != "mbpp" or type(out) is Digest or type(check.expected) is Digest:
        return passes(check, out)
    try:
        return dataset_close(out, check.expected, check.param, as_set=check.rule.wrap == "set")
    except Exception:
        return False


MUTANTS = {
    "[0] for []": (lambda v: type(v) is list and not v, lambda v: [0],
                   "r = [0] if type(r) is list and not r else r"),
    "[x, x] for [x]": (lambda v: type(v) in (list, tuple) and len(v) == 1, lambda v: v * 2,
                       "r = r * 2 if type(r) in (list, tuple) and len(r) == 1 else r"),
    "tuple for list": (lambda v: type(v) is list, tuple, "r = tuple(r) if type(r) is list else r"),
    "list for tuple": (lambda v: type(v) is tuple, list, "r = list(r) if type(r) is tuple else r"),
}


def wrapped(code: str, entry: str, change: str) -> str:
    return (f"{code}\n\n_rapid_gold = {entry}\n\ndef {entry}(*args):\n    r = _rapid_gold(*args)\n"
            f"    {change}\n    return r\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data", help="MBPP+ file (MbppPlus-OriginFmt.jsonl.gz) or directory")
    ap.add_argument("--timeout", type=float, default=None, help="reward.timeout_s (default: the config's, 3 s)")
    ap.add_argument("--memory", type=int, default=None, help="reward.memory_mb (default: the config's)")
    ap.add_argument("--cache", default=None, help="cache directory (reference runs are cached there)")
    ap.add_argument("--no-programs", action="store_true", help="skip the program mutants (sandbox runs)")
    ap.add_argument("--time", nargs="+", metavar="ID", help="only time the named problems' gold solutions run as "
                    "candidates in the sandbox (3 runs each), next to the same calls without reporting anything")
    args = ap.parse_args()

    from rapid_cli.config import compose_config
    from rapid_cli.tasks import make_task

    extra = [f"reward.timeout_s={args.timeout}"] * (args.timeout is not None)
    extra += [f"reward.memory_mb={args.memory}"] * (args.memory is not None)
    cfg = compose_config(["task=mbpp", f"task.data_path={Path(args.data).resolve()}", *extra])
    task = make_task(cfg.task, cache_dir=args.cache, reward_cfg=cfg.reward)
    if args.time:  # the named problems only (the splits would check every gold solution first)
        return timing(task, [p for split in task.load() for p in split if p.id in args.time])
    problems = task.train + task.test
    t0 = time.time()
    suites = task.suites(problems)
    broken = [p.id for p, s in zip(problems, suites, strict=True) if s.error]
    print(f"reference runs: {len(problems)} problems, {len(broken)} without valid checks {broken} "
          f"({time.time() - t0:.0f} s)")
    t0 = time.time()
    gold = task.rewards([p.answer for p in problems], problems)
    missed = [p.id for p, r in zip(problems, gold, strict=True) if r != 1.0]
    print(f"gold: {int(sum(gold))} / {len(problems)} earn 1 (timeout_s {cfg.reward.timeout_s}, memory_mb "
          f"{cfg.reward.memory_mb}; {time.time() - t0:.0f} s); not: {missed}")

    ok = [(p, s) for p, s in zip(problems, suites, strict=True) if not s.error]
    print("\nvalue mutants (expected values changed, judged outside): problems changed / passed under "
          "the data set's rule / passed under rapid's EvalPlus rule")
    for name, (applies, change, _) in MUTANTS.items():
        changed = old_ok = new_ok = 0
        kept = []
        for p, s in ok:
            hit = [c for c in s.checks if type(c.expected) is not Digest and c.rule.observe == "value"
                   and applies(c.expected)]
            if not hit:
                continue
            changed += 1
            values = [change(c.expected) if c in hit else c.expected for c in s.checks]
            old_ok += all(old_passes(c, v) for c, v in zip(s.checks, values, strict=True) if c.rule.compare != "holds")
            if all(passes(c, v) for c, v in zip(s.checks, values, strict=True) if c.rule.compare != "holds"):
                new_ok += 1
                kept.append(f"{p.id} ({s.checks[0].rule.wrap or s.checks[0].rule.compare})")
        print(f"  {name:16s} {changed:4d} / {old_ok:4d} / {new_ok:4d}  {', '.join(kept)}")

    if args.no_programs:
        return
    print("\nprogram mutants (gold function wrapped, run in the sandbox): problems whose outputs change / "
          "earning 1 under the data set's rule / under rapid's")
    for name, (applies, _, change) in MUTANTS.items():
        todo = [(p, s) for p, s in ok if any(type(c.expected) is not Digest and applies(c.expected)
                                             for c in s.checks)]
        progs = [wrapped(p.answer, task.source(p).entry, change) for p, _ in todo]
        runs = task.outcomes(progs, [p for p, _ in todo])
        old_ok = new_ok = 0
        kept = []
        for (p, s), (o, _) in zip(todo, runs, strict=True):
            values = reported_values(o.stdout, len(s.checks)) if o is not None else None
            if judge(s, values):
                new_ok += 1
                kept.append(p.id)
            old_ok += values is not None and all(old_passes(c, v) for c, v in zip(s.checks, values, strict=True))
        print(f"  {name:16s} {len(todo):4d} / {old_ok:4d} / {new_ok:4d}  {', '.join(kept)}")


def timing(task, problems) -> None:
    """Seconds of a whole sandboxed candidate run of each gold solution (calls, encoding and reporting the
    values, starting the jail), of the same calls alone in the jail, and of an empty jail run."""
    from rapid_cli.rewards import plain

    empty = min(task.sandbox.run("pass").seconds for _ in range(3))
    print(f"empty sandbox run: {empty:.2f} s")
    for p in problems:
        (suite,) = task.suites([p])
        calls = repr(plain.dumps([c.args for c in suite.checks]))
        alone = (f"{p.answer}\n\nimport json, time\n_plain = {{}}\nexec({plain.source()!r}, _plain)\n"
                 f"_args = _plain['decode'](json.loads({calls}))\n_t = time.perf_counter()\n"
                 f"for _a in _args:\n    {task.source(p).entry}(*_a)\nprint(time.perf_counter() - _t)\n")
        runs = [task.outcomes([f"```python\n{p.answer}\n```"], [p])[0][0] for _ in range(3)]
        calls_s = [float(task.sandbox.run(alone).stdout.strip().splitlines()[-1]) for _ in range(3)]
        whole, alone_s = " ".join(f"{o.seconds:.2f}" for o in runs), " ".join(f"{t:.2f}" for t in calls_s)
        print(f"{p.id}: {len(suite.checks)} calls; whole candidate run {whole} s "
              f"({', '.join(sorted({o.status for o in runs}))}); the calls alone {alone_s} s")


if __name__ == "__main__":
    main()
