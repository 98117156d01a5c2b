"""RAPID's overhead over its two unavoidable costs: generating the rollouts and one forward/backward
pass over their tokens.

    .venv/bin/python scripts/bench_overhead.py                       # SmolLM2-135M, arith, A=4 M=8 G=4
    .venv/bin/python scripts/bench_overhead.py -- model=tiny sampler=hf

It runs `rounds` real RAPID rounds (the first is warm-up) and takes the mean wall-clock of the others,
then, on the same model and the same kind of batch, times standalone (1) the sampler generating the
round's A*M prompts x G completions and (2) a forward and backward pass over those completions with
the same micro-batches (no optimizer). overhead = round / (generate + forward/backward); the phases
the round adds on top (old log-prob recompute, reward, optimizer steps, weight sync, glue) are listed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "disabled")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
DEFAULTS = ["model=smollm2-135m", "task=arith", "sampler.max_tokens=12", "sampler.kv_cache_gb=1.0", "algo.group_size=4",
            "algo.prompts_per_step=8", "algo.steps_per_generation=4", "algo.micro_batch_size=32", "optimizer.lr=1e-5",
            "eval.at_start=false", "eval.limit=1", "train.log_samples=0", "train.save_every=0",
            "logger.wandb.mode=disabled", "logger.live=false"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    sys.stdout.reconfigure(line_buffering=True)

    from rapid_cli.config import compose_config
    from rapid_cli.plan import open_sampler
    from rapid_cli.policy import completion_logprobs, load_policy, pack, pick_device
    from rapid_cli.tasks import make_task
    from rapid_cli.timing import Phase
    from rapid_cli.trainer import PromptStream, train
    from rapid_cli.types import SamplingParams

    cfg = compose_config([*DEFAULTS, *args.overrides, f"train.rounds={args.rounds}"])
    a, s = cfg.algo, cfg.sampler
    run_dir = Path(tempfile.mkdtemp(prefix="rapid-overhead-"))
    train(cfg, run_dir)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rounds = [r for r in rows if r["round"] > 1 and "eval/pass@1" not in r] or [r for r in rows if r["round"] > 1]
    phases = [Phase.GENERATE, Phase.REWARD, Phase.OLD_LOGPROBS, Phase.UPDATE, Phase.SYNC]
    per_phase = {p: statistics.mean(r.get(p.key, 0.0) for r in rounds) for p in phases}
    round_s = sum(per_phase.values())

    device = pick_device(cfg.device)
    task = make_task(cfg.task, seed=cfg.seed, cache_dir=cfg.cache_dir, reward_cfg=cfg.reward)
    model, tok, path = load_policy(cfg.model, device, cfg.cache_dir)
    sampler = open_sampler(cfg, model, tok, path)
    stream = PromptStream(task.train, cfg.seed + 1)
    gen_s, fb_s = [], []
    for i in range(len(rounds) + 1):
        prompts = [task.prompt_ids(p, tok, cfg.model.chat_template)
                   for p in stream.next(a.steps_per_generation * a.prompts_per_step)]
        params = SamplingParams(n=a.group_size, temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_tokens,
                                seed=i)
        t0 = time.perf_counter()
        gens = sampler.generate(prompts, params)
        t1 = time.perf_counter()
        rows_prompts = [p for p in prompts for _ in range(a.group_size)]
        for start in range(0, len(gens), a.micro_batch_size):
            sl = slice(start, start + a.micro_batch_size)
            batch = pack(rows_prompts[sl], gens.completion_ids[sl], tok.pad_token_id, device)
            lp = completion_logprobs(model, batch, s.temperature)
            (lp * batch.completion_mask).sum().backward()
        model.zero_grad(set_to_none=True)
        t2 = time.perf_counter()
        if i:  # the first pass is warm-up
            gen_s.append(t1 - t0)
            fb_s.append(t2 - t1)
    gen, fb = statistics.mean(gen_s), statistics.mean(fb_s)
    print(f"RAPID round (mean of {len(rounds)} after warm-up): {round_s:.2f} s = " +
          ", ".join(f"{p} {v:.2f}" for p, v in per_phase.items()))
    print(f"standalone: generate {gen:.2f} s + forward/backward {fb:.2f} s = {gen + fb:.2f} s")
    print(f"overhead ratio: {round_s / (gen + fb):.3f}  (goal <= 1.10)")
    extra = {"old_logprobs (recompute forward)": per_phase["old_logprobs"], "reward": per_phase["reward"],
             "sync": per_phase["sync"], "update beyond fwd/bwd (optimizer, packing, loss)": per_phase["update"] - fb,
             "generate beyond standalone": per_phase["generate"] - gen}
    for name, v in extra.items():
        print(f"  {name}: {v:+.2f} s ({100 * v / round_s:+.1f}% of the round)")


if __name__ == "__main__":
    main()
