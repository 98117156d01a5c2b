"""vLLM's engine eager (rapid's CPU default) vs compiled (`sampler.enforce_eager=false`: torch.compile of the
model) on one round of experiment=paper-gsm8k-long's generation: 16 GSM8K prompts x G=8, up to 256 tokens, twice.
Each mode runs in a process of its own (one engine per process), one after the other; the same seeds draw
the same samples in both, so tokens/s compare like with like. Prints engine start seconds, tokens/s per
repeat and the ratio.

    .venv/bin/python scripts/bench_engine_compile.py            # ~8 minutes on 2 CPU cores
"""

from __future__ import annotations

import json
import subprocess
import sys
import time


def measure(eager: str) -> dict:
    import torch

    from rapid_cli.config import compose_config
    from rapid_cli.plan import open_sampler
    from rapid_cli.policy import load_policy
    from rapid_cli.tasks import make_task
    from rapid_cli.types import SamplingParams

    cfg = compose_config(["experiment=paper-gsm8k-long", f"sampler.enforce_eager={eager}"])
    model, tok, path = load_policy(cfg.model, torch.device("cpu"), cfg.cache_dir)
    task = make_task(cfg.task, seed=0, cache_dir=cfg.cache_dir)
    prompts = [task.prompt_ids(p, tok, cfg.model.chat_template) for p in task.train[:16]]
    t = time.perf_counter()
    sampler = open_sampler(cfg, model, tok, path)
    out = {"start_s": time.perf_counter() - t, "tokens": [], "seconds": []}
    for rep in range(2):
        t = time.perf_counter()
        gens = sampler.generate(prompts, SamplingParams(n=8, temperature=1.0, max_tokens=256, seed=rep))
        out["seconds"].append(time.perf_counter() - t)
        out["tokens"].append(gens.num_tokens)
    return out


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        print("RESULT " + json.dumps(measure(sys.argv[2])), flush=True)
        return
    results = {}
    for eager in ("true", "false"):
        proc = subprocess.run([sys.executable, __file__, "--child", eager], capture_output=True, text=True)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if line is None:
            sys.exit(f"enforce_eager={eager} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
        results[eager] = r = json.loads(line[7:])
        rates = ", ".join(f"{n / s:.0f}" for n, s in zip(r["tokens"], r["seconds"], strict=True))
        print(f"enforce_eager={eager:<5}: engine start {r['start_s']:5.1f} s; tokens/s per repeat {rates} "
              f"(tokens {r['tokens']})")
    rate = {e: sum(r["tokens"]) / sum(r["seconds"]) for e, r in results.items()}
    print(f"compiled vs eager: {rate['false'] / rate['true']:.2f}x tokens/s, "
          f"{results['false']['start_s'] - results['true']['start_s']:+.1f} s engine start")


if __name__ == "__main__":
    main()
