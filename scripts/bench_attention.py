"""The packed update path's attention: the dense mask (pack_groups + grouped_logprobs: sdpa computes every
(query, key) pair of a row of L = prompt + G completions, then masks ~85% of them away at G=8) against the
segmented one (pack_segments + segmented_logprobs: the prompt's queries over the prompt, then each
completion a chunk of SEGMENT_CHUNK queries at a time over its prompt and itself), on the same rollouts in
the same process, alternating micro-batch by micro-batch, so the machine's noise hits both alike.

    .venv/bin/python scripts/bench_attention.py                      # gsm8k G=4 and G=8, SmolLM2-135M, fp32
    .venv/bin/python scripts/bench_attention.py --groups 8 --repeats 5
    .venv/bin/python scripts/bench_attention.py --chunks 32 64 128   # the chunk size, each against dense
    .venv/bin/python scripts/bench_attention.py -- model=tiny        # any config override after --

Shapes: bench_update.py's gsm8k ones: real GSM8K prompts (the model's chat template), random completions of
50-256 tokens, G=4 with micro-batches of 8 rows (2 groups) and G=8 with 16 rows (2 groups); --groups prompt
groups per shape (bench_update.py takes 8: a minute per pass here at G=8, so fewer by default).

Passes: `pi_old`, the forward pass of Learner.logprobs (eval mode, no gradient); `fwd+bwd`, the forward and
backward pass of a step (train mode, the log-probs weighted by fixed random advantages, summed, backward),
no optimizer. Each micro-batch's pack is timed with its pass. Per pass: the median wall-clock seconds over
--repeats (a repeat is one sweep over every micro-batch with every path), the median over repeats of the
speed-up (dense / segmented seconds of the same repeat), the same speed-up in process CPU time (both
threads' time, which another process's load stretches less than wall-clock; ratios near 1 in one and not
the other are noise), and the peak resident memory a micro-batch's pass adds (bench_update.measured; the
largest over the micro-batches, median over repeats). Attention pairs: (query, key) pairs the attention
computes per layer and head, dense (R x L x L) and segmented (SegmentPlan.pairs), against the pairs the
mask keeps.
The first repeat also checks that every path's log-probs equal the dense path's (max |difference|).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "disabled")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def timed(fn) -> tuple[float, float, float, object]:
    """(wall seconds, process CPU seconds, peak MiB above the resident memory before, result) of one call
    (the peak as bench_update.measured takes it)."""
    from bench_update import measured

    cpu = time.process_time()
    box = []
    wall, peak = measured(lambda: box.append(fn()))
    return wall, time.process_time() - cpu, peak, box[0]


def kept_pairs(prompt_lengths: list[int], completion_lengths: list[int], group_size: int) -> int:
    """(query, key) pairs the packed mask keeps: a prompt of P tokens P(P+1)/2, a completion of n behind it
    n*P + n(n+1)/2."""
    pairs = 0
    for g, P in enumerate(prompt_lengths):
        pairs += P * (P + 1) // 2 + sum(n * P + n * (n + 1) // 2
                                        for n in completion_lengths[g * group_size : (g + 1) * group_size])
    return pairs


def bench(name: str, model, tok, ro, group_size: int, micro: int, chunks: list[int], repeats: int, amp) -> None:
    import torch

    from rapid_cli.policy import grouped_logprobs, pack_groups, pack_segments, segmented_logprobs

    G = group_size
    comp = ro.generations.completion_ids
    batches = [(mb, mb + micro) for mb in range(0, len(comp), micro)]
    rng = random.Random(0)
    C = max(len(c) for c in comp)
    advantages = torch.tensor([[rng.uniform(-1, 1)] * C for _ in comp])  # a row's weight on all its tokens

    def inputs(start: int, stop: int):
        return [ro.prompt_ids[g] for g in range(start // G, stop // G)], comp[start:stop]

    def dense(start, stop, grad):
        batch = pack_groups(*inputs(start, stop), G, tok.pad_token_id, "cpu")
        return grouped_logprobs(model, batch, 1.0), batch.completion_mask

    def segmented(chunk):
        def run(start, stop, grad):
            batch = pack_segments(*inputs(start, stop), G, tok.pad_token_id, "cpu", chunk=chunk)
            return segmented_logprobs(model, batch, 1.0), batch.completion_mask
        return run

    paths = {"dense": dense, **{f"segmented/{c}": segmented(c) for c in chunks}}

    def forward(path, start, stop):
        model.eval()
        with torch.no_grad(), amp():
            return paths[path](start, stop, False)

    def step(path, start, stop):
        model.train()
        with amp():
            lp, mask = paths[path](start, stop, True)
            (lp * mask * advantages[start:stop, : lp.shape[1]]).sum().backward()
        model.zero_grad(set_to_none=True)

    prompt_lengths = [len(p) for p in ro.prompt_ids]
    kept = kept_pairs(prompt_lengths, [len(c) for c in comp], G)
    dense_pairs = 0
    plan_pairs = dict.fromkeys(chunks, 0)
    for start, stop in batches:
        prompts, completions = inputs(start, stop)
        grouped = pack_groups(prompts, completions, G, tok.pad_token_id, "cpu")
        dense_pairs += grouped.input_ids.numel() * grouped.input_ids.shape[1]
        for c in chunks:
            plan_pairs[c] += pack_segments(prompts, completions, G, tok.pad_token_id, "cpu", chunk=c).plan.pairs()
    tokens = sum(len(c) for c in comp)
    print(f"\n{name}: {len(ro.prompt_ids)} groups x G={G}, micro-batches of {micro} rows ({micro // G} groups), "
          f"completion tokens {tokens}, prompt tokens {sum(prompt_lengths)} (once per group)")
    print(f"  attention pairs per layer and head: mask keeps {kept / 1e6:.2f}M; dense computes "
          f"{dense_pairs / 1e6:.2f}M ({dense_pairs / kept:.1f}x)"
          + "".join(f", segmented/{c} {p / 1e6:.2f}M ({p / kept:.2f}x)" for c, p in plan_pairs.items()))
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for rep in range(repeats):
        for part, fn in (("pi_old", forward), ("fwd+bwd", step)):
            sums = {path: [0.0, 0.0, 0.0] for path in paths}
            for start, stop in batches:
                order = list(paths) if (rep + start // micro) % 2 == 0 else list(reversed(paths))
                outs = {}
                for path in order:
                    wall, cpu, peak, out = timed(lambda: fn(path, start, stop))  # noqa: B023
                    sums[path][0] += wall
                    sums[path][1] += cpu
                    sums[path][2] = max(sums[path][2], peak)
                    outs[path] = out
                if rep == 0 and part == "pi_old":
                    want, mask = outs["dense"]
                    for path, (got, _) in outs.items():
                        gap = ((got - want) * mask).abs().max().item()
                        if gap > 1e-3:
                            raise SystemExit(f"{path}: log-probs differ from the dense path's by {gap:.2e}")
            for path, (wall, cpu, peak) in sums.items():
                results.setdefault((part, path), []).append((wall, cpu, peak))
    print(f"  {'pass':<9}{'path':<16}{'wall s':>9}{'speed-up':>10}{'CPU s':>9}{'CPU speed-up':>14}{'peak MiB':>10}")
    for part in ("pi_old", "fwd+bwd"):
        base = results[part, "dense"]
        for path in paths:
            runs = results[part, path]
            wall = statistics.median(w for w, _, _ in runs)
            cpu = statistics.median(c for _, c, _ in runs)
            peak = statistics.median(m for _, _, m in runs)
            up = statistics.median(b[0] / r[0] for b, r in zip(base, runs, strict=True))
            up_cpu = statistics.median(b[1] / r[1] for b, r in zip(base, runs, strict=True))
            print(f"  {part:<9}{path:<16}{wall:>9.2f}{up:>9.2f}x{cpu:>9.2f}{up_cpu:>13.2f}x{peak:>10.0f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--groups", type=int, default=4, help="prompt groups per shape")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--chunks", type=int, nargs="+", default=None,
                    help="segmented chunk sizes to time (default: policy.SEGMENT_CHUNK)")
    ap.add_argument("--shapes", nargs="+", default=["4", "8"], choices=["4", "8"], help="G of the gsm8k shapes")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: torch's, one per core); 1 keeps another process's load from "
                         "stretching one thread's wait on the other, so CPU time then measures the work itself")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="bf16: autocast, as the Learner")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") is None:  # as bench_update.py: freed memory goes back at once
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"})
    sys.stdout.reconfigure(line_buffering=True)
    import contextlib

    import torch

    from bench_update import rollouts
    from rapid_cli.config import compose_config
    from rapid_cli.policy import SEGMENT_CHUNK, load_policy
    from rapid_cli.tasks import make_task

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = compose_config(["model=smollm2-135m", "task=gsm8k", "task.source=offline", "logger.wandb.mode=disabled",
                          *args.overrides])
    model, tok, _ = load_policy(cfg.model, torch.device("cpu"), cfg.cache_dir)
    task = make_task(cfg.task, seed=0, cache_dir=cfg.cache_dir)
    bf16 = args.precision == "bf16"

    def amp():
        return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    chunks = args.chunks or [SEGMENT_CHUNK]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, model {cfg.model.name}, {args.precision}")
    for G, micro in ((4, 8), (8, 16)):
        if str(G) in args.shapes:
            ro = rollouts(task, tok, cfg, (50, 256), G, args.groups, seed=G)
            bench(f"gsm8k G={G}", model, tok, ro, G, micro, chunks, args.repeats, amp)


if __name__ == "__main__":
    main()
