"""The vLLM engine in two settings, on one round of experiment=paper-gsm8k-long's generation: 16 GSM8K prompts x
G=8, up to 256 tokens, twice. Each setting runs in a process of its own (one engine per process), one after the
other; the same seeds draw the same samples where the engine computes the same numbers. Prints engine start
seconds, tokens/s per repeat and the ratio of the second setting to the first.

    .venv/bin/python scripts/bench_engine.py                    # --compare compile, ~8 minutes on 2 CPU cores
    .venv/bin/python scripts/bench_engine.py --compare dtype    # fp32 engine vs bf16 (sampler.dtype=auto where
                                                                # the chip has bf16 units)

  compile  sampler.enforce_eager=true (rapid's CPU default) vs false (torch.compile of the model)
  dtype    sampler.dtype=float32 vs bfloat16: a bf16 engine samples from other numbers, so its completions differ
           in length; tokens/s is the fair comparison, and the token counts are printed beside it
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

SETTINGS = {"compile": [("eager", "sampler.enforce_eager=true"), ("compiled", "sampler.enforce_eager=false")],
            "dtype": [("fp32", "sampler.dtype=float32"), ("bf16", "sampler.dtype=bfloat16")]}


def measure(override: str) -> dict:
    import torch

    from rapid_cli.config import compose_config
    from rapid_cli.plan import open_sampler
    from rapid_cli.policy import load_policy
    from rapid_cli.tasks import make_task
    from rapid_cli.types import SamplingParams

    cfg = compose_config(["experiment=paper-gsm8k-long", override])
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
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--compare", default="compile", choices=list(SETTINGS))
    args = ap.parse_args()
    results = {}
    for name, override in SETTINGS[args.compare]:
        proc = subprocess.run([sys.executable, __file__, "--child", override], capture_output=True, text=True)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if line is None:
            sys.exit(f"{override} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
        results[name] = r = json.loads(line[7:])
        rates = ", ".join(f"{n / s:.0f}" for n, s in zip(r["tokens"], r["seconds"], strict=True))
        print(f"{override:<28}: engine start {r['start_s']:5.1f} s; tokens/s per repeat {rates} "
              f"(tokens {r['tokens']})")
    (first, a), (second, b) = results.items()
    rate = {name: sum(r["tokens"]) / sum(r["seconds"]) for name, r in results.items()}
    print(f"{second} vs {first}: {rate[second] / rate[first]:.2f}x tokens/s, "
          f"{b['start_s'] - a['start_s']:+.1f} s engine start")


if __name__ == "__main__":
    main()
