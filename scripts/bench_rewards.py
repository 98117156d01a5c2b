"""Reward benchmark: gold solutions through the real scorers, test conversion, and per-program cost.

    .venv/bin/python scripts/bench_rewards.py --mbpp ../shared/data/mbppplus/MbppPlus-OriginFmt.jsonl.gz

1. Code tasks (MBPP+, HumanEval): how many problems' tests convert to (inputs, expected, rule) form,
   the checks by rule, and the time of the reference runs that record the expected values (once per
   problem, into a fresh cache here; cached for every later run).
2. Gold solutions of every task (MBPP+, HumanEval, GSM8K, MATH-500) scored at the default limits
   (reward.timeout_s=3, reward.memory_mb=1024), with the ones that fail.
3. Per-program cost, before and after, in the same run on the same problems: the old path (the
   tests' asserts appended to the program and run inside it, pass = exit status 0; ce3365c) against
   the new one (`task.rewards`: the function called on the inputs in the jail, the values compared
   outside), on the gold programs of every MBPP+ problem (or --programs of them) and every HumanEval
   one, with the passes of each and the ratio.
4. The sandbox's parallel speed-up on the new path (one worker vs one per core).
5. With `--baseline REV` (e.g. ce3365c, before issue 13): the jail itself against the one of git revision
   REV on the same self-checking programs, one worker, taking turns program by program; prints the ratio.
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import tempfile
import time
import types


def gold_completions(name: str, problems) -> list[str]:
    if name == "mbpp":
        return [f"```python\n{p.answer}\n```" for p in problems]
    if name == "humaneval":
        return [p.answer for p in problems]
    if name == "gsm8k":
        return [p.meta["solution"] for p in problems]
    return [f"\\boxed{{{p.answer}}}" for p in problems]


def legacy_program(task, completion: str, problem) -> str:
    """The program as ce3365c built it: candidate and tests in one process, the verdict its exit status."""
    m = problem.meta
    if task.name == "mbpp":
        return "\n".join([task.program(completion, problem), "", *m["test_list"], "", m["test"], ""])
    return f"{task.program(completion, problem)}\n\n{m['test']}\n\ncheck({m['entry_point']})\n"


def conversion(task) -> list:
    """Prints what converts; returns every problem whose tests convert."""
    train, test = task.load()
    problems = list({p.id: p for p in train + test}.values())
    kept, dropped = task.convertible(problems)
    start = time.perf_counter()
    suites = task.suites(kept)
    seconds = time.perf_counter() - start
    broken = [f"{p.id}: {s.error}" for p, s in zip(kept, suites, strict=True) if s.error]
    rules = collections.Counter(c.rule.compare if c.rule.observe != "truth" else "truth" for s in suites for c in s.checks)
    print(f"  {task.name:10s} {len(kept)} / {len(problems)} problems convert, {len(dropped)} do not; "
          f"{sum(rules.values())} checks ({', '.join(f'{k} {v}' for k, v in rules.most_common())}); "
          f"reference runs {seconds:.1f} s, {len(broken)} without valid checks")
    for line in dropped + broken:
        print(f"    {line}")
    return kept


def cost(task, problems, completions, label: str) -> float:
    """Seconds per program, old path vs new, on the same programs; prints both and the ratio."""
    old_programs = [legacy_program(task, c, p) for c, p in zip(completions, problems, strict=True)]

    def timed(fn):
        start = time.perf_counter()
        result = fn()
        return result, (time.perf_counter() - start) / len(problems)

    # old, new, old: the mean of the two old runs, so warm caches or load drift do not favour one side
    old, t_old1 = timed(lambda: task.sandbox.run_many(old_programs))
    new, t_new = timed(lambda: task.rewards(completions, problems))
    _, t_old2 = timed(lambda: task.sandbox.run_many(old_programs))
    t_old = (t_old1 + t_old2) / 2
    print(f"  {label}: old (asserts in the program) {1000 * t_old:.0f} ms/program, {sum(o.passed for o in old)} pass; "
          f"new (values compared outside) {1000 * t_new:.0f} ms/program, {int(sum(new))} pass; "
          f"new/old = {t_new / t_old:.2f}")
    return t_new


def sandbox_at(rev: str) -> types.ModuleType:
    """rapid_cli.sandbox as it was at git revision `rev`, loaded beside the current one."""
    repo = os.path.join(os.path.dirname(__file__), "..")
    source = subprocess.run(["git", "-C", repo, "show", f"{rev}:src/rapid_cli/sandbox.py"], capture_output=True,
                            text=True, check=True).stdout
    module = types.ModuleType(f"sandbox_{rev}")
    sys.modules[module.__name__] = module  # dataclasses look their module up
    exec(compile(source, f"{rev}:sandbox.py", "exec"), module.__dict__)
    return module


def cost_ratio(rev: str, programs: list[str], names: list[str], timeout: float, memory_mb: int, rounds: int = 2) -> None:
    """Per-program wall time of this sandbox against revision `rev`'s, one worker. The two sandboxes take
    turns program by program (the order swapped each time), so both see the same load on a shared machine."""
    import statistics

    import rapid_cli.sandbox as current

    old = sandbox_at(rev)
    boxes = {rev: old.Sandbox("bwrap", old.Limits(timeout_s=timeout, memory_mb=memory_mb), ["numpy"], 1),
             "current": current.Sandbox("bwrap", current.Limits(timeout_s=timeout, memory_mb=memory_mb), ["numpy"], 1)}
    seconds: dict[str, list[float]] = {name: [] for name in boxes}
    passed = dict.fromkeys(boxes, 0)
    failing: dict[str, set[str]] = {name: set() for name in boxes}
    for i, program in enumerate(programs * rounds):
        for name in list(boxes)[:: 1 if i % 2 else -1]:
            start = time.perf_counter()
            ok = boxes[name].run(program).passed
            seconds[name].append(time.perf_counter() - start)
            passed[name] += ok
            if not ok:
                failing[name].add(names[i % len(names)])
    for name, times in seconds.items():
        print(f"  sandbox {name:8s}: {1000 * statistics.mean(times):6.1f} ms/program mean, "
              f"{1000 * statistics.median(times):6.1f} median, {passed[name]} / {len(times)} passed "
              f"({len(times)} runs at {timeout} s, 1 worker)")
    for name, ids in failing.items():
        print(f"  failing in {name} at least once: {', '.join(sorted(ids)) or 'none'}")
    ratios = [new / was for new, was in zip(seconds["current"], seconds[rev], strict=True)]
    print(f"  per-program cost, current / {rev}: {statistics.mean(seconds['current']) / statistics.mean(seconds[rev]):.2f}x "
          f"of the mean, {statistics.median(ratios):.2f}x median of program-by-program ratios")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mbpp", help="MBPP+ jsonl(.gz) (hub evalplus/mbppplus when omitted)")
    ap.add_argument("--timeout", type=float, default=3.0)
    ap.add_argument("--memory-mb", type=int, default=1024)
    ap.add_argument("--programs", type=int, default=0, help="MBPP+ programs for the cost (0: one per problem)")
    ap.add_argument("--cache", help="cache dir for the recorded checks (default: a fresh temporary one)")
    ap.add_argument("--baseline", metavar="REV", help="also time the jail of this git revision and print the ratio")
    ap.add_argument("--only-cost", action="store_true", help="with --baseline: only the jail-vs-jail cost ratio")
    args = ap.parse_args()
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))
    from rapid_cli.config import compose_config
    from rapid_cli.tasks import make_task

    cache = args.cache or tempfile.mkdtemp(prefix="rapid-bench-")
    limits = [f"reward.timeout_s={args.timeout}", f"reward.memory_mb={args.memory_mb}"]
    tasks = {}
    for name in ("mbpp", "humaneval", "gsm8k", "math"):
        extra = [f"task.data_path={args.mbpp}"] if name == "mbpp" and args.mbpp else []
        cfg = compose_config([f"task={name}", *limits, *extra])
        tasks[name] = make_task(cfg.task, cache_dir=cache, reward_cfg=cfg.reward)

    if args.only_cost and args.baseline:
        mbpp = tasks["mbpp"]
        everything = mbpp.train + mbpp.test
        rows = [everything[i % len(everything)] for i in range(args.programs or len(everything))]
        programs = [legacy_program(mbpp, c, p) for c, p in zip(gold_completions("mbpp", rows), rows, strict=True)]
        cost_ratio(args.baseline, programs, [p.id for p in rows], args.timeout, args.memory_mb)
        return

    print(f"test conversion ({os.cpu_count()} cores, checks cached in {cache})")
    code_problems = {name: conversion(tasks[name]) for name in ("mbpp", "humaneval")}

    print(f"gold solutions at reward.timeout_s={args.timeout} reward.memory_mb={args.memory_mb}")
    for name, task in tasks.items():
        problems = code_problems.get(name) or task.test
        start = time.perf_counter()
        rewards = task.rewards(gold_completions(name, problems), problems)
        seconds = time.perf_counter() - start
        failed = [p.id for p, r in zip(problems, rewards, strict=True) if r < 1]
        print(f"  {name:10s} {len(problems) - len(failed):5d} / {len(problems):5d} pass  ({seconds:6.1f} s)"
              + (f"  failing: {', '.join(failed)}" if failed else ""))

    print("per-program cost, same programs, same sandbox, one run")
    mbpp, mbpp_problems = tasks["mbpp"], code_problems["mbpp"]
    rows = [mbpp_problems[i % len(mbpp_problems)] for i in range(args.programs or len(mbpp_problems))]
    cost(mbpp, rows, gold_completions("mbpp", rows), f"{len(rows)} MBPP+ gold programs")
    humaneval, he_problems = tasks["humaneval"], code_problems["humaneval"]
    cost(humaneval, he_problems, gold_completions("humaneval", he_problems), f"{len(he_problems)} HumanEval gold programs")

    times = {}
    for workers in (1, os.cpu_count() or 1):
        mbpp.sandbox.workers = workers
        start = time.perf_counter()
        mbpp.rewards(gold_completions("mbpp", rows), rows)
        times[workers] = time.perf_counter() - start
        print(f"  {len(rows)} MBPP+ programs (new path), {workers} worker(s): {times[workers]:.1f} s "
              f"({1000 * times[workers] / len(rows):.0f} ms/program)")
    if len(times) == 2:
        one, many = times.values()
        print(f"  parallel speed-up: {one / many:.2f}x")
    if args.baseline:
        programs = [legacy_program(mbpp, c, p) for c, p in zip(gold_completions("mbpp", rows), rows, strict=True)]
        cost_ratio(args.baseline, programs, [p.id for p in rows], args.timeout, args.memory_mb)


if __name__ == "__main__":
    main()
