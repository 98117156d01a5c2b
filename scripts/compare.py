"""Time-to-accuracy comparison: the same model, task, seeds and sample budget under several algorithms.

    .venv/bin/python scripts/compare.py --out docs/benchmarks/cpu-arith --seeds 0 1 --trl
    .venv/bin/python scripts/compare.py --out /tmp/cmp --samples 64 --seeds 0 -- model=tiny sampler=hf

Every contender sees samples = rounds x A x M x G completions (M, G from the shared overrides), so
RAPID with A steps per round runs samples/(A M G) rounds and the on-policy baselines (A = 1) run
samples/(M G). Runs go one after another (never in parallel: they are timed) into <out>/runs/; then
<out>/compare.md gets the table (wall-clock with and without evaluation, seconds per phase, final
pass@1 / pass@k, time to the target reward, ratios to GRPO and to TRL measured in this same
invocation) and <out>/compare.png the curves against training wall-clock.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
DEFAULTS = ["model=smollm2-135m", "task=arith", "sampler.max_tokens=12", "sampler.kv_cache_gb=1.0", "algo.group_size=4",
            "algo.prompts_per_step=8", "algo.micro_batch_size=32", "optimizer.lr=1e-5", "eval.limit=100", "eval.n=4",
            "eval.k=[1,4]", "eval.temperature=1.0", "train.log_samples=0", "train.save_every=0",
            "logger.wandb.mode=disabled", "logger.live=false"]


def contenders(a_values: list[int], algos: list[str], trl: bool,
               variants: list[str]) -> list[tuple[str, str, int, list[str]]]:
    """(label, algo preset, A, extra overrides). A variant is "label:A:override override ...", a RAPID run."""
    out = [(f"rapid A={a}", "rapid", a, []) for a in a_values] + [(name, name, 1, []) for name in algos]
    out += [("trl grpo", "trl", 1, [])] if trl else []
    for v in variants:
        label, a, extra = v.split(":", 2)
        out.append((label, "rapid", int(a), extra.split()))
    return out


def run_one(label: str, algo: str, a: int, extra: list[str], seed: int, rounds: int, evals: int, shared: list[str],
            out: Path) -> Path:
    run_dir = out / "runs" / f"{label.replace(' ', '_').replace('=', '').replace(',', '')}-seed{seed}"
    if (run_dir / "metrics.jsonl").exists() and (run_dir / "DONE").exists():
        print(f"  {run_dir.name}: done before, reusing")
        return run_dir
    overrides = [*shared, f"train.rounds={rounds}", f"seed={seed}"]
    if algo == "trl":
        cmd = [sys.executable, str(ROOT / "scripts" / "trl_grpo.py"), "--out", str(run_dir), "--seed", str(seed),
               *[o for o in overrides if not o.startswith("seed=")], "algo.steps_per_generation=1"]
        env = {**os.environ, "PYTHONPATH": str(ROOT / ".bench-site")}
    else:
        every = max(1, rounds // evals)
        cmd = [str(Path(sys.executable).parent / "rapid"), "train", *overrides, f"algo={algo}",
               f"algo.steps_per_generation={a}", f"eval.every={every}", f"hydra.run.dir={run_dir}", *extra]
        env = dict(os.environ)
    start = time.perf_counter()
    print(f"  {run_dir.name}: {rounds} rounds ...", flush=True)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    (run_dir / "stdout.log").parent.mkdir(parents=True, exist_ok=True)
    (run_dir / "stdout.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode:
        raise SystemExit(f"{label} seed {seed} failed (exit {proc.returncode}); see {run_dir / 'stdout.log'}")
    (run_dir / "DONE").write_text(f"{time.perf_counter() - start:.1f}\n")
    return run_dir


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--samples", type=int, default=768, help="completions per run (the sample budget)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--a", type=int, nargs="+", default=[1, 2, 4, 8], help="RAPID steps per generation round")
    ap.add_argument("--algos", nargs="*", default=["grpo", "pg", "dapo"])
    ap.add_argument("--trl", action="store_true",
                    help="also run TRL's GRPOTrainer (needs .bench-site, see trl_grpo.py)")
    ap.add_argument("--variant", action="append", default=[], metavar="LABEL:A:OVERRIDES",
                    help='an extra RAPID contender, e.g. "rapid A=4, sampler logprobs:4:algo.old_logprobs=sampler"')
    ap.add_argument("--evals", type=int, default=2, help="evaluations during a run, besides the one before it")
    ap.add_argument("--target", type=float, default=0.8, help="train reward whose first crossing time is reported")
    ap.add_argument("overrides", nargs="*", help="rapid overrides shared by all runs (after --)")
    args = ap.parse_args()
    from rapid_cli.config import compose_config
    from rapid_cli.report import Run, markdown, plot, sweep_table

    shared = DEFAULTS + args.overrides
    base = compose_config(shared)
    per_step = base.algo.prompts_per_step * base.algo.group_size
    args.out.mkdir(parents=True, exist_ok=True)
    runs: list[Run] = []
    field = contenders(args.a, args.algos, args.trl, args.variant)
    for label, _, a, _ in field:
        if args.samples % (a * per_step):
            raise SystemExit(f"--samples {args.samples} is not a multiple of A x M x G = {a * per_step} for {label}")
    for seed in args.seeds:  # seed-major: a run cut short still has every contender on the first seed
        for label, algo, a, extra in field:
            run_dir = run_one(label, algo, a, extra, seed, args.samples // (a * per_step), args.evals, shared, args.out)
            rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
            runs.append(Run(run_dir, [], str(seed), rows, label))
    runs.sort(key=lambda r: [c[0] for c in field].index(r.label))

    header, table = sweep_table(runs, [("reward/mean", args.target)], {"x GRPO": "grpo", "x TRL": "trl grpo"})
    import platform

    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    command = " ".join(["python scripts/compare.py", *sys.argv[1:]])
    text = (f"# Comparison: {args.samples} completions per run, seeds {args.seeds}\n\n"
            f"Machine: {machine}. Shared settings: `{' '.join(shared)}`.\n\nCommand: `{command}`\n\n"
            f"{markdown(header, table)}\n![curves](compare.png)\n")
    (args.out / "compare.md").write_text(text)
    plot(runs, args.out / "compare.png")
    print(text)


if __name__ == "__main__":
    main()
