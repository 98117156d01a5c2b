"""The update pass in its three layouts, on the same rollouts in the same process, alternating, so the
machine's noise hits them alike: padded rows (algo.packing=false); packed (algo.packing=true: each prompt
encoded once, completions without padding, the LM head over completion tokens only, a chunk at a time) under
the dense mask (algo.packed_attention=dense); packed with the segmented attention, which computes only the
(query, key) pairs the mask keeps (algo.packed_attention=segments, what auto picks).

    .venv/bin/python scripts/bench_update.py                  # the two shapes below, SmolLM2-135M, fp32 CPU
    .venv/bin/python scripts/bench_update.py --shapes demo --repeats 5
    .venv/bin/python scripts/bench_update.py -- model=tiny    # any config override after --
    .venv/bin/python scripts/bench_update.py --shapes gsm8k --precision both   # fp32 and bf16 and their ratio

Shapes (prompts rendered with the model's chat template, as training does):
  demo   the cpu-demo round: arith prompts, completions of 4-12 tokens, G=4, M=8, micro-batch 32
  gsm8k  real GSM8K prompts, completions of 50-256 tokens, G=4 and G=8, M=8, micro-batch 8 and 16
  skip   a whole RAPID round (A=4, M=8, G=4, GSM8K prompts, completions of 50-256 tokens) at GSM8K's reward
         rate with SmolLM2-135M (1 group in 12 holds a correct answer, docs/results/gsm8k), and one without
         a correct answer: the pi_old pass and the round's 4 optimizer steps with algo.skip_zero_advantage
         off and on, in this process

For each: the time of the round's old-log-prob pass (no gradient) and of one optimizer step over one
mini-batch (forward, backward, AdamW), the median of --repeats, and the peak resident memory each
adds over what the process held before it (Linux: the peak is reset through /proc/self/clear_refs).
Completion token ids are random (the update's cost depends on their lengths, not their content).

Precision (--precision): `auto` (the default) is what `train.mixed_precision=auto` resolves to on this CPU
(rapid_cli.hardware.fast_bf16: bf16 where it reports amx_bf16 or avx512_bf16, fp32 elsewhere); `fp32` and `bf16`
force one; `both` measures the two in this process, alternating within each repeat, and prints the bf16 over
fp32 speed-up of every pass. The Learner gets it as the trainer passes it (`precision="bf16"` or `"none"`): fp32
master weights, bf16 autocast around every forward and backward.

Achieved FLOP rate: useful model FLOPs per second, counted by `update_flops` from the model's config, one count
for the padded and the packed path alike (the padded path's work on padding and on prompts repeated G times is
not counted, so its rate is the useful work it achieves). A multiply-add is 2 FLOPs. In each layer every token
goes through the q, k, v, o projections (hidden x heads*head_dim for q and o, hidden x kv_heads*head_dim for k
and v) and the gated MLP (3 x hidden x intermediate); the LM head (hidden x vocab) is counted on the positions
that predict a completion token only, one per completion token (the packed path computes no other; the padded
one's extra prompt positions are not counted); attention's two products (q.k and weights.v) cost
4 x heads x head_dim per layer per (query, key) pair the causal mask keeps: a prompt of P tokens has P(P+1)/2
pairs, a completion of n tokens behind it n*P + n(n+1)/2 (completions of one group do not see each other).
Prompt tokens count once per group, as the packed layout computes them, not G times. Embedding look-ups, norms,
rotary, activations, softmax, biases, the loss and AdamW are not counted (under 1% at 135M). The pi_old pass is
one forward, F = 2 x (layer parameters x every token + head parameters x completion tokens) + attention; an
optimizer step is 3 F (the backward pass costs twice the forward: gradients of activations and of weights).

Peak: this process also times one matrix product at the model's MLP shape, 4096 tokens x hidden_size by
hidden_size x intermediate_size (4096x576 @ 576x1536 for SmolLM2-135M), in fp32 and in bf16 (best of at least 2
runs after a warm-up), and prints each pass's achieved rate as a fraction of the peak of the precision it ran in.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import random
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "disabled")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def _kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def measured(fn) -> tuple[float, float]:
    """(seconds, peak MiB above the resident memory before) of one call of `fn`. Freed memory is handed
    back to the system first (and large blocks are mmapped: main() sets the threshold), so what the call
    allocates shows in the peak instead of reusing pages the process already holds."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident size
    before = _kib("VmRSS")
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start, (_kib("VmHWM") - before) / 1024


LABEL = {"none": "fp32", "bf16": "bf16"}  # Learner precision -> what the tables call it
# the update's layouts: (algo.packing, algo.packed_attention)
LAYOUTS = {"padded": (False, "dense"), "packed": (True, "dense"), "segments": (True, "segments")}
PROBE_TOKENS = 4096  # rows of the peak probe's matrix product


def update_flops(config, prompt_lengths: list[int], completion_lengths: list[int], group_size: int) -> tuple[int, int]:
    """(pi_old forward, optimizer step) useful FLOPs of groups of `group_size` completions, `prompt_lengths` one
    per group, `completion_lengths` group by group; `config` is the model's (a transformers config of a
    Llama/Qwen2-like decoder with a gated MLP). The count is the module docstring's."""
    forward = sum(forward_flops(config, prompt_lengths, completion_lengths, group_size))
    return forward, 3 * forward


def forward_flops(config, prompt_lengths: list[int], completion_lengths: list[int],
                  group_size: int) -> tuple[int, int]:
    """update_flops' forward pass in two parts: (the weights' matrix products: projections, MLP and LM head;
    attention's two products over the (query, key) pairs the mask keeps)."""
    H, L, inter = config.hidden_size, config.num_hidden_layers, config.intermediate_size
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or H // heads
    layer = H * head_dim * (2 * heads + 2 * kv_heads) + 3 * H * inter  # q, o + k, v + gate, up, down
    if len(completion_lengths) != len(prompt_lengths) * group_size:
        raise ValueError(f"{len(completion_lengths)} completions for {len(prompt_lengths)} groups of {group_size}")
    tokens = pairs = 0
    for g, P in enumerate(prompt_lengths):
        mine = completion_lengths[g * group_size : (g + 1) * group_size]
        tokens += P + sum(mine)
        pairs += P * (P + 1) // 2 + sum(n * P + n * (n + 1) // 2 for n in mine)
    completion = sum(completion_lengths)
    return 2 * (L * layer * tokens + H * config.vocab_size * completion), 4 * L * heads * head_dim * pairs


def matmul_rate(rows: int, inner: int, cols: int, dtype, seconds: float = 1.0) -> float:
    """GFLOP/s of one [rows, inner] @ [inner, cols] product in `dtype` on the CPU: the best of at least 2 runs
    (more while under `seconds`) after one warm-up run."""
    import torch

    a, b = torch.randn(rows, inner).to(dtype), torch.randn(inner, cols).to(dtype)
    a @ b  # warm-up: the library picks and prepares its kernel for this shape
    best, start = float("inf"), time.perf_counter()
    runs = 0
    while runs < 2 or (time.perf_counter() - start < seconds and runs < 100):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
        runs += 1
    return 2 * rows * inner * cols / best / 1e9


def rollouts(task, tok, cfg, lengths: tuple[int, int], group_size: int, groups: int, seed: int):
    from rapid_cli.types import Generations, Rollouts

    rng = random.Random(seed)
    problems = task.train[:groups]
    prompts = [task.prompt_ids(p, tok, cfg.model.chat_template) for p in problems]
    ids = [[rng.randrange(10, len(tok)) for _ in range(rng.randint(*lengths))] for _ in range(groups * group_size)]
    gens = Generations(completion_ids=ids, texts=[""] * len(ids), logprobs=None, finish_reasons=["length"] * len(ids))
    rewards = [float(rng.random() < 0.4) for _ in ids]
    return Rollouts(problems, prompts, gens, rewards, group_size)


def bench(name: str, cfg, model, tok, task, lengths, group_size: int, micro: int, repeats: int,
          precisions: list[str], peaks: dict[str, float], layouts: list[str]) -> None:
    from rapid_cli.learner import Learner

    cfg.algo.group_size, cfg.algo.micro_batch_size = group_size, micro
    M = cfg.algo.prompts_per_step
    ro = rollouts(task, tok, cfg, lengths, group_size, M, seed=group_size)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    tokens = sum(len(c) for c in ro.generations.completion_ids)
    prompt_tokens = sum(len(p) for p in ro.prompt_ids) * group_size
    # both passes cover the same M groups: the pi_old pass all rows of ro, the step the mini-batch of all M
    forward, train = update_flops(model.config, [len(p) for p in ro.prompt_ids],
                                  [len(c) for c in ro.generations.completion_ids], group_size)
    flops = {"logprobs": forward, "step": train}
    results: dict[tuple[str, str, str], list[tuple[float, float]]] = {}
    for _ in range(repeats):
        for precision in precisions:
            for layout in layouts:
                packing, attention = LAYOUTS[layout]
                cfg.algo.packing, cfg.algo.packed_attention = packing, attention
                learner = Learner(model, cfg.algo, cfg.optimizer, pad_id=tok.pad_token_id, temperature=1.0,
                                  total_steps=10, precision=precision)
                results.setdefault((precision, layout, "logprobs"), []).append(
                    measured(lambda: learner.logprobs(ro)))  # noqa: B023
                rows = ro.group_slice(0, M)
                results.setdefault((precision, layout, "step"), []).append(
                    measured(lambda: learner.step(ro, rows)))  # noqa: B023
                model.load_state_dict(state)
    print(f"\n{name}: {M} groups x G={group_size}, micro-batch {micro}, prompt tokens {prompt_tokens} "
          f"(x G as padded rows), completion tokens {tokens}; useful work: logprobs {forward / 1e9:.1f} GFLOP, "
          f"step {train / 1e9:.1f} GFLOP")
    seconds = {key: statistics.median(t for t, _ in runs) for key, runs in results.items()}
    mib = {key: statistics.median(m for _, m in runs) for key, runs in results.items()}
    for precision in precisions:
        peak = peaks[precision]
        print(f"  {LABEL[precision]} (matmul peak {peak:.1f} GFLOP/s); seconds, peak MiB added, GFLOP/s (of peak)")
        ratios = [(a, b) for a, b in (("padded", "packed"), ("packed", "segments")) if {a, b} <= set(layouts)]
        print(f"  {'pass':<10}" + "".join(f"{layout:>28}" for layout in layouts)
              + "".join(f"{f'{b}/{a}':>17}" for a, b in ratios))
        for part in ("logprobs", "step"):
            cells = ""
            for layout in layouts:
                t, m = seconds[precision, layout, part], mib[precision, layout, part]
                rate = flops[part] / t / 1e9
                cells += f"{f'{t:.2f} s {m:.0f} MiB {rate:.0f} ({rate / peak:.0%})':>28}"
            cells += "".join(f"{seconds[precision, a, part] / seconds[precision, b, part]:>16.2f}x" for a, b in ratios)
            print(f"  {part:<10}{cells}")
    if len(precisions) == 2:
        for part in ("logprobs", "step"):
            ratios = ", ".join(f"{layout} {seconds['none', layout, part] / seconds['bf16', layout, part]:.2f}x"
                               for layout in layouts)
            print(f"  bf16 vs fp32, {part:<8}: {ratios} faster")


def bench_skipping(cfg, model, tok, task, repeats: int, precisions: list[str]) -> None:
    """A RAPID round's pi_old pass and its A steps, every row computed vs the zero-gradient groups left out: at
    GSM8K's reward rate, and in a round without a correct answer (most of SmolLM2-135M's GSM8K rounds), where
    nothing is left to compute but AdamW's steps."""
    from rapid_cli.behaviour import BehaviourLogprobs
    from rapid_cli.distributed import Dist
    from rapid_cli.learner import Learner

    a = cfg.algo
    A, M, G = 4, 8, 4
    a.steps_per_generation, a.prompts_per_step, a.group_size, a.micro_batch_size = A, M, G, 8
    ro = rollouts(task, tok, cfg, (50, 256), G, A * M, seed=12)
    rng = random.Random(12)
    solved = [rng.random() < 1 / 12 for _ in range(A * M)]  # a group with a correct answer: 1 and G-1 draws
    rates = {"GSM8K's reward rate": [float(i == 0 or rng.random() < 0.3) if solved[g] else 0.0
                                     for g in range(A * M) for i in range(G)],
             "no correct answer": [0.0] * (A * M * G)}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for name, rewards in rates.items():
        ro.rewards = rewards
        mixed = sum(len(set(rewards[g * G : (g + 1) * G])) > 1 for g in range(A * M))
        results: dict[tuple[str, bool, str], list[float]] = {}
        for _ in range(repeats):
            for precision in precisions:
                for skip in (False, True):
                    a.skip_zero_advantage = skip
                    learner = Learner(model, a, cfg.optimizer, pad_id=tok.pad_token_id, temperature=1.0,
                                      total_steps=10, precision=precision)
                    behaviour = BehaviourLogprobs(a, Dist(), {})
                    ro.moving = learner.moving_rows(ro, behaviour.own_rows(ro))
                    start = time.perf_counter()
                    ro.old_logprobs, ro.old_rows = behaviour(learner, ro)
                    results.setdefault((precision, skip, "pi_old"), []).append(time.perf_counter() - start)
                    start = time.perf_counter()
                    steps = [learner.step(ro, ro.group_slice(i * M, M)) for i in range(A)]
                    results.setdefault((precision, skip, "update"), []).append(time.perf_counter() - start)
                    skipped = sum(s.skipped_rows for s in steps) / sum(s.rows for s in steps)
                    model.load_state_dict(state)
        print(f"\nskip, {name}: RAPID round A={A} x M={M} x G={G}, {mixed} of {A * M} groups with unequal "
              f"rewards, {skipped:.0%} of the update's rows left out, completion tokens {ro.generations.num_tokens}")
        for precision in precisions:
            print(f"  {LABEL[precision]}")
            print(f"  {'pass':<10}{'all rows s':>12}{'skipping s':>12}{'speed-up':>10}")
            for part in ("pi_old", "update"):
                old_s, new_s = (statistics.median(results[precision, skip, part]) for skip in (False, True))
                print(f"  {part:<10}{old_s:>12.2f}{new_s:>12.2f}{old_s / max(new_s, 1e-9):>9.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", nargs="+", default=["demo", "gsm8k", "skip"], choices=["demo", "gsm8k", "skip"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "both"],
                    help="auto: what train.mixed_precision=auto picks on this CPU; both: fp32 and bf16, alternating")
    ap.add_argument("--group-sizes", type=int, nargs="+", default=[4, 8], choices=[4, 8], help="G of the gsm8k shape")
    ap.add_argument("--layouts", nargs="+", default=list(LAYOUTS), choices=list(LAYOUTS),
                    help="the update layouts measured (ratios need the two layouts they compare)")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") is None:  # glibc reads it at start: start again with it
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"})
    sys.stdout.reconfigure(line_buffering=True)
    import torch

    from rapid_cli.config import compose_config
    from rapid_cli.hardware import bf16_units, fast_bf16
    from rapid_cli.policy import load_policy
    from rapid_cli.tasks import make_task

    fast = fast_bf16(False)
    precisions = {"auto": ["bf16" if fast else "none"], "fp32": ["none"], "bf16": ["bf16"],
                  "both": ["none", "bf16"]}[args.precision]
    torch.manual_seed(0)
    base = ["model=smollm2-135m", "algo.prompts_per_step=8", "optimizer.lr=1e-5", "logger.wandb.mode=disabled",
            *args.overrides]
    cfg = compose_config([*base, "task=arith"])
    model, tok, _ = load_policy(cfg.model, torch.device("cpu"), cfg.cache_dir)
    c = model.config
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, model {cfg.model.name}, "
          f"vocab {c.vocab_size}; CPU bf16 units: {bf16_units(False)}; precision {args.precision}: "
          f"{' and '.join(LABEL[p] for p in precisions)}")
    if "bf16" in precisions and not fast:
        print("  note: this CPU has no fast bf16 units; train.mixed_precision=bf16 is refused here and this "
              "measures why")
    shape = (PROBE_TOKENS, c.hidden_size, c.intermediate_size)
    peaks = {p: matmul_rate(*shape, torch.bfloat16 if p == "bf16" else torch.float32) for p in ("none", "bf16")}
    print(f"matmul {shape[0]}x{shape[1]} @ {shape[1]}x{shape[2]}: fp32 {peaks['none']:.1f} GFLOP/s, "
          f"bf16 {peaks['bf16']:.1f} GFLOP/s (bf16/fp32 {peaks['bf16'] / peaks['none']:.2f}x)")
    if "demo" in args.shapes:
        task = make_task(cfg.task, seed=0)
        bench("demo (arith)", cfg, model, tok, task, (4, 12), group_size=4, micro=32, repeats=args.repeats,
              precisions=precisions, peaks=peaks, layouts=args.layouts)
    if "gsm8k" in args.shapes:
        cfg = compose_config([*base, "task=gsm8k", "task.source=offline"])
        task = make_task(cfg.task, seed=0, cache_dir=cfg.cache_dir)
        for G, micro in ((4, 8), (8, 16)):
            if G not in args.group_sizes:
                continue
            bench(f"gsm8k G={G}", cfg, model, tok, task, (50, 256), group_size=G, micro=micro, repeats=args.repeats,
                  precisions=precisions, peaks=peaks, layouts=args.layouts)
    if "skip" in args.shapes:
        cfg = compose_config([*base, "task=gsm8k", "task.source=offline"])
        bench_skipping(cfg, model, tok, make_task(cfg.task, seed=0, cache_dir=cfg.cache_dir), args.repeats,
                       precisions)


if __name__ == "__main__":
    main()
