"""Reward benchmark: gold solutions through the real scorers, and sandbox parallelism.

    .venv/bin/python scripts/bench_rewards.py --mbpp ../shared/data/mbppplus/MbppPlus-OriginFmt.jsonl.gz

For each task (MBPP+, HumanEval, GSM8K, MATH-500) it scores every gold solution at the default limits
(reward.timeout_s=3, reward.memory_mb=1024) and lists the ones that fail there; then it scores 256
MBPP+ programs (a round of 64 prompts x G=4) with one sandbox worker and with one per core, and prints
the speed-up measured in the same run. With `--baseline REV` it also scores the same programs with the
sandbox of git revision REV (e.g. ce3365c, before issue 13) and prints the per-program cost ratio.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
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
    ap.add_argument("--programs", type=int, default=256)
    ap.add_argument("--baseline", metavar="REV", help="also time the sandbox of this git revision and print the ratio")
    ap.add_argument("--only-cost", action="store_true", help="skip the gold-solution and parallelism sections")
    args = ap.parse_args()
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))
    from rapid_cli.cli import compose_config
    from rapid_cli.tasks import make_task

    limits = [f"reward.timeout_s={args.timeout}", f"reward.memory_mb={args.memory_mb}"]
    mbpp_extra = [f"task.data_path={args.mbpp}"] if args.mbpp else []
    mbpp_cfg = compose_config(["task=mbpp", *limits, *mbpp_extra])
    mbpp_task = make_task(mbpp_cfg.task, reward_cfg=mbpp_cfg.reward)
    mbpp_problems = mbpp_task.train + mbpp_task.test
    rows = [mbpp_problems[i % len(mbpp_problems)] for i in range(args.programs)]
    programs = [mbpp_task.program(f"```python\n{p.answer}\n```", p) for p in rows]
    if not args.only_cost:
        print(f"gold solutions at reward.timeout_s={args.timeout} reward.memory_mb={args.memory_mb}, {os.cpu_count()} cores")
        for name in ("mbpp", "humaneval", "gsm8k", "math"):
            if name == "mbpp":
                task, problems = mbpp_task, mbpp_problems
            else:
                cfg = compose_config([f"task={name}", *limits])
                task = make_task(cfg.task, reward_cfg=cfg.reward)
                problems = task.test
            start = time.perf_counter()
            rewards = task.rewards(gold_completions(name, problems), problems)
            seconds = time.perf_counter() - start
            failed = [p.id for p, r in zip(problems, rewards, strict=True) if r < 1]
            print(f"  {name:10s} {len(problems) - len(failed):5d} / {len(problems):5d} pass  ({seconds:6.1f} s)"
                  + (f"  failing: {', '.join(failed)}" if failed else ""))
        parallel_speedup(programs, args.timeout, args.memory_mb)
    if args.baseline:
        cost_ratio(args.baseline, programs, [p.id for p in rows], args.timeout, args.memory_mb)


def parallel_speedup(programs: list[str], timeout: float, memory_mb: int) -> None:
    from rapid_cli.sandbox import Limits, Sandbox

    times = {}
    for workers in (1, os.cpu_count() or 1):
        sandbox = Sandbox("bwrap", Limits(timeout_s=timeout, memory_mb=memory_mb), ["numpy"], workers)
        start = time.perf_counter()
        sandbox.run_many(programs)
        times[workers] = time.perf_counter() - start
        print(f"  {len(programs)} MBPP+ programs, {workers} worker(s): {times[workers]:.1f} s "
              f"({1000 * times[workers] / len(programs):.0f} ms/program)")
    if len(times) == 2:
        one, many = times.values()
        print(f"  parallel speed-up: {one / many:.2f}x")

if __name__ == "__main__":
    main()
