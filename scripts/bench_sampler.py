"""Sampler benchmark: vLLM vs HF generation throughput, vLLM engine start, and weight-sync cost per round.

    .venv/bin/python scripts/bench_sampler.py                    # SmolLM2-135M, 64 and 256 sequences
    .venv/bin/python scripts/bench_sampler.py --model tiny --sizes 16

Both samplers get the same GSM8K prompts (G=4 completions each, temperature 1, max_tokens tokens) in
the same process, so the printed ratios compare like with like on a noisy machine. The sync fraction
is measured on a real RAPID round (generate, recompute log-probs, A updates, sync) with the vLLM sampler.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("WANDB_MODE", "disabled")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 256], help="sequences per generate call (prompts x G)")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--group-size", type=int, default=4)
    args = ap.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # vLLM's exit path can skip flushing a redirected stdout

    import torch

    from rapid_cli.config import compose_config as compose
    from rapid_cli.learner import Learner
    from rapid_cli.plan import open_sampler
    from rapid_cli.policy import load_policy
    from rapid_cli.samplers.hf import HFSampler
    from rapid_cli.tasks import make_task
    from rapid_cli.types import Rollouts, SamplingParams

    G = args.group_size
    cfg = compose([f"model={args.model}", "task=gsm8k", "task.source=offline", "sampler=vllm", f"algo.group_size={G}"])
    model, tok, path = load_policy(cfg.model, torch.device("cpu"))
    task = make_task(cfg.task)
    problems = task.train[: max(args.sizes) // G]
    prompts = [task.prompt_ids(p, tok) for p in problems]

    t0 = time.perf_counter()
    vllm_sampler = open_sampler(cfg, model, tok, path)
    start_s = time.perf_counter() - t0
    hf_sampler = HFSampler(model, tok, batch_size=64)
    vllm_sampler.generate(prompts[:2], SamplingParams(n=1, max_tokens=4))  # warm-up

    def throughput(sampler, n_seqs):
        params = SamplingParams(n=G, temperature=1.0, max_tokens=args.max_tokens, seed=1)
        t = time.perf_counter()
        gens = sampler.generate(prompts[: n_seqs // G], params)
        dt = time.perf_counter() - t
        return gens.num_tokens / dt, dt, gens.num_tokens

    rows = []
    for n in args.sizes:
        hf_tps, hf_s, hf_tok = throughput(hf_sampler, n)
        v_tps, v_s, v_tok = throughput(vllm_sampler, n)
        rows.append((n, hf_tps, v_tps, hf_s, v_s, hf_tok, v_tok))

    syncs = []
    for _ in range(3):
        t = time.perf_counter()
        vllm_sampler.sync_weights(model.state_dict().items())
        syncs.append(time.perf_counter() - t)
    sync_s = sorted(syncs)[1]

    # One real RAPID round with the vLLM sampler: A steps x M prompts x G completions.
    a = cfg.algo
    round_problems = task.train[: a.steps_per_generation * a.prompts_per_step]
    round_prompts = [task.prompt_ids(p, tok) for p in round_problems]
    phases = {}
    t = time.perf_counter()
    gens = vllm_sampler.generate(round_prompts,
                                 SamplingParams(n=G, temperature=1.0, max_tokens=args.max_tokens, seed=2))
    phases["generate"] = time.perf_counter() - t
    rewards = task.rewards(gens.texts, [p for p in round_problems for _ in range(G)])
    ro = Rollouts(round_problems, round_prompts, gens, rewards, G)
    t = time.perf_counter()
    learner = Learner(model, a, cfg.optimizer, pad_id=tok.pad_token_id, temperature=1.0,
                      total_steps=a.steps_per_generation)
    ro.old_logprobs = learner.logprobs(ro)
    phases["old_logprobs"] = time.perf_counter() - t
    t = time.perf_counter()
    for i in range(a.steps_per_generation):
        learner.step(ro, ro.group_slice(i * a.prompts_per_step, a.prompts_per_step))
    phases["update"] = time.perf_counter() - t
    t = time.perf_counter()
    vllm_sampler.sync_weights(learner.full_weights())
    phases["sync"] = time.perf_counter() - t
    round_s = sum(phases.values())

    print(f"\n## Sampler benchmark: {args.model}, {torch.get_num_threads()} CPU threads, "
          f"max_tokens {args.max_tokens}, G={G}\n")
    print("| sequences | HF tok/s | vLLM tok/s | vLLM / HF | HF s | vLLM s | tokens HF / vLLM |")
    print("|---|---|---|---|---|---|---|")
    for n, hf_tps, v_tps, hf_s, v_s, hf_tok, v_tok in rows:
        print(f"| {n} | {hf_tps:.0f} | {v_tps:.0f} | **{v_tps / hf_tps:.2f}x** | {hf_s:.1f} | {v_s:.1f} "
              f"| {hf_tok} / {v_tok} |")
    print(f"\n- vLLM engine start (import + load + KV cache + first sync): {start_s:.1f} s")
    print(f"- weight sync (full state_dict into the engine + prefix-cache reset), median of 3: {sync_s:.3f} s")
    print(f"- one RAPID round ({a.steps_per_generation} x {a.prompts_per_step} prompts x {G}, vLLM): "
          + ", ".join(f"{k} {v:.1f} s" for k, v in phases.items()) + f"; total {round_s:.1f} s")
    print(f"- sync share of the round: **{100 * phases['sync'] / round_s:.2f}%**")


if __name__ == "__main__":
    main()
