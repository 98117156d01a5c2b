"""End to end, one invocation: `rapid train experiment=paper-gsm8k` (RAPID A=4, one round of 128 completions,
the HF sampler so both runs draw the same samples) with algo.skip_zero_advantage=false, then true. Prints each
run's phase seconds, the ratio of update + pi_old, whether the round's samples were the same (reward, tokens)
and the largest weight difference after the round.

    .venv/bin/python scripts/bench_skip_e2e.py                    # ~15 minutes on 2 CPU cores
    .venv/bin/python scripts/bench_skip_e2e.py -- train.samples=256 sampler=vllm
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

RAPID = str(Path(sys.executable).parent / "rapid")
BASE = ["experiment=paper-gsm8k", "algo=rapid", "algo.steps_per_generation=4", "sampler=hf", "train.samples=128",
        "eval.limit=2", "eval.n=1", "eval.k=[1]", "logger.live=false", "logger.wandb.mode=disabled", "seed=0"]


def run(out: Path, skip: bool, extra: list[str]) -> dict:
    cmd = [RAPID, "train", *BASE, *extra, f"algo.skip_zero_advantage={str(skip).lower()}", f"hydra.run.dir={out}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "WANDB_MODE": "disabled"})
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return next(r for r in rows if r["round"] == 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    from safetensors.torch import load_file

    tmp = Path(tempfile.mkdtemp(prefix="rapid-skip-"))
    rows, weights = {}, {}
    for skip in (False, True):
        out = tmp / f"skip-{skip}"
        rows[skip] = run(out, skip, args.overrides)
        last = sorted((out / "checkpoints").glob("round-*"))[-1]
        weights[skip] = load_file(last / "model" / "model.safetensors")
    print(f"{' '.join(BASE + args.overrides)}   (runs in {tmp})")
    print(f"{'':<28}{'all rows':>10}{'skipping':>10}{'ratio':>8}")
    phases = ["time/generate", "time/reward", "time/old_logprobs", "time/update"]
    for key in phases:
        a, b = rows[False].get(key, 0.0), rows[True].get(key, 0.0)
        print(f"{key:<28}{a:>10.1f}{b:>10.1f}{a / max(b, 1e-9):>7.2f}x")
    a, b = (rows[s]["time/old_logprobs"] + rows[s]["time/update"] for s in (False, True))
    print(f"{'update + pi_old':<28}{a:>10.1f}{b:>10.1f}{a / b:>7.2f}x")
    print(f"{'train/skipped_rows_frac':<28}{rows[False]['train/skipped_rows_frac']:>10.2f}"
          f"{rows[True]['train/skipped_rows_frac']:>10.2f}")
    same = all(rows[False][k] == rows[True][k] for k in ("reward/mean", "perf/gen_tokens", "train/completion_len"))
    print(f"round 1's samples the same (reward, tokens): {same}")
    worst = max((weights[False][k].float() - weights[True][k].float()).abs().max().item() for k in weights[False])
    print(f"largest weight difference after the round: {worst:.2e} (lr {rows[True]['train/lr']:g})")


if __name__ == "__main__":
    main()
