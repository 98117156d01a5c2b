"""Reward benchmark: gold solutions through the real scorers, and sandbox parallelism.

    .venv/bin/python scripts/bench_rewards.py --mbpp ../shared/data/mbppplus/MbppPlus-OriginFmt.jsonl.gz

For each task (MBPP+, HumanEval, GSM8K, MATH-500) it scores every gold solution at the default limits
(reward.timeout_s=3, reward.memory_mb=1024) and lists the ones that fail there; then it scores 256
MBPP+ programs (a round of 64 prompts x G=4) with one sandbox worker and with one per core, and prints
the speed-up measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def gold_completions(name: str, problems) -> list[str]:
    if name == "mbpp":
        return [f"```python\n{p.answer}\n```" for p in problems]
    if name == "humaneval":
        return [p.answer for p in problems]
    if name == "gsm8k":
        return [p.meta["solution"] for p in problems]
    return [f"\\boxed{{{p.answer}}}" for p in problems]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mbpp", help="MBPP+ jsonl(.gz) (hub evalplus/mbppplus when omitted)")
    ap.add_argument("--timeout", type=float, default=3.0)
    ap.add_argument("--memory-mb", type=int, default=1024)
    ap.add_argument("--programs", type=int, default=256)
    args = ap.parse_args()
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))
    from rapid_cli.cli import compose_config
    from rapid_cli.tasks import make_task

    limits = [f"reward.timeout_s={args.timeout}", f"reward.memory_mb={args.memory_mb}"]
    print(f"gold solutions at reward.timeout_s={args.timeout} reward.memory_mb={args.memory_mb}, {os.cpu_count()} cores")
    mbpp_task = None
    for name in ("mbpp", "humaneval", "gsm8k", "math"):
        extra = [f"task.data_path={args.mbpp}"] if name == "mbpp" and args.mbpp else []
        cfg = compose_config([f"task={name}", *limits, *extra])
        task = make_task(cfg.task, reward_cfg=cfg.reward)
        problems = task.train + task.test if name == "mbpp" else task.test
        start = time.perf_counter()
        rewards = task.rewards(gold_completions(name, problems), problems)
        seconds = time.perf_counter() - start
        failed = [p.id for p, r in zip(problems, rewards, strict=True) if r < 1]
        print(f"  {name:10s} {len(problems) - len(failed):5d} / {len(problems):5d} pass  ({seconds:6.1f} s)"
              + (f"  failing: {', '.join(failed)}" if failed else ""))
        if name == "mbpp":
            mbpp_task, mbpp_problems = task, problems

    from rapid_cli.sandbox import Limits, Sandbox

    rows = [mbpp_problems[i % len(mbpp_problems)] for i in range(args.programs)]
    programs = [mbpp_task.program(f"```python\n{p.answer}\n```", p) for p in rows]
    times = {}
    for workers in (1, os.cpu_count() or 1):
        sandbox = Sandbox("bwrap", Limits(timeout_s=args.timeout, memory_mb=args.memory_mb), ["numpy"], workers)
        start = time.perf_counter()
        sandbox.run_many(programs)
        times[workers] = time.perf_counter() - start
        print(f"  {args.programs} MBPP+ programs, {workers} worker(s): {times[workers]:.1f} s "
              f"({1000 * times[workers] / args.programs:.0f} ms/program)")
    if len(times) == 2:
        one, many = times.values()
        print(f"  parallel speed-up: {one / many:.2f}x")


if __name__ == "__main__":
    main()
