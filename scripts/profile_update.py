"""Where one optimizer step's seconds go: torch.profiler over a real Learner step (forward, backward and
AdamW over one mini-batch), the ops' own (self) CPU time summed into kinds of work, beside the matrix
products' achieved rate and the chip's matrix-product rate measured in the same run.

    .venv/bin/python scripts/profile_update.py                        # GSM8K G=8, dense mask vs segments
    .venv/bin/python scripts/profile_update.py --shape demo --precision bf16
    .venv/bin/python scripts/profile_update.py --attention segments --top 25 -- model=tiny

Shapes are bench_update.py's (the same rollouts: real prompts, random completions): `gsm8k` is 8 GSM8K
groups of G=8 completions of 50-256 tokens, micro-batches of 16 rows; `demo` the cpu-demo round. Each
attention (--attention) gets one warm-up step, then one profiled step; the weights are restored between.

Kinds of work (by op name; an op's self time excludes the ops it calls):
  matmul     aten::mm, addmm, bmm, matmul's kernels: the projections, the MLP and the LM head
  attention  sdpa's kernels (flash/efficient/math) and their backward
  gather     index_select, index_add_, gather, scatter, cat, stack (packing, the segments, the head's targets)
  elementwise the rest of the arithmetic: rotary, norms, activations, softmax, adds and multiplies
  copy/cast  copy_, to, contiguous, clone, fill (layout changes and dtype casts)
  optimizer  AdamW's own ops (the optimizer's step, profiled under a record_function of its own)
  other      everything else (autograd bookkeeping, allocation)
Achieved rates: bench_update.forward_flops' useful FLOPs of the step (3 x the forward's), the weights' matrix
products over the matmul kind's seconds and attention's products over the attention kind's.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "disabled")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

KINDS = {
    "attention": ("scaled_dot_product", "flash_attention", "efficient_attention", "_safe_softmax"),
    "matmul": ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear", "aten::baddbmm"),
    "gather": ("index_select", "index_add", "aten::gather", "scatter", "aten::cat", "aten::stack",
               "aten::index", "aten::embedding"),
    "copy/cast": ("aten::copy_", "aten::to", "aten::_to_copy", "aten::contiguous", "aten::clone", "aten::fill_",
                  "aten::zero_", "aten::zeros", "aten::empty", "aten::full", "aten::new_zeros"),
}
SHAPES = {"gsm8k": ("gsm8k", 8, 16), "demo": ("arith", 4, 32)}  # task, G, micro-batch rows


def kind(name: str, optimizer: bool) -> str:
    if optimizer:
        return "optimizer"
    for k, patterns in KINDS.items():
        if any(name == p or name.startswith(p) or p in name for p in patterns):
            return k
    if name.startswith("aten::") and not name.startswith(("aten::as_strided", "aten::view", "aten::resize",
                                                          "aten::detach", "aten::t")):
        return "elementwise"
    return "other"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="gsm8k", choices=list(SHAPES))
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--attention", nargs="+", default=["dense", "segments"], choices=["dense", "segments"])
    ap.add_argument("--top", type=int, default=12, help="ops listed by self time")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    sys.stdout.reconfigure(line_buffering=True)
    import torch
    from torch.profiler import ProfilerActivity, profile

    from bench_update import PROBE_TOKENS, forward_flops, matmul_rate, rollouts
    from rapid_cli.config import compose_config
    from rapid_cli.learner import Learner
    from rapid_cli.policy import load_policy
    from rapid_cli.tasks import make_task

    task_name, G, micro = SHAPES[args.shape]
    torch.manual_seed(0)
    cfg = compose_config(["model=smollm2-135m", "algo.prompts_per_step=8", "optimizer.lr=1e-5",
                          "logger.wandb.mode=disabled", f"task={task_name}", f"algo.group_size={G}",
                          f"algo.micro_batch_size={micro}", *(["task.source=offline"] if task_name == "gsm8k" else []),
                          *args.overrides])
    model, tok, _ = load_policy(cfg.model, torch.device("cpu"), cfg.cache_dir)
    task = make_task(cfg.task, seed=0, cache_dir=cfg.cache_dir)
    M = cfg.algo.prompts_per_step
    ro = rollouts(task, tok, cfg, (50, 256) if task_name == "gsm8k" else (4, 12), G, M, seed=G)
    c = model.config
    weights, attention_fwd = forward_flops(c, [len(p) for p in ro.prompt_ids],
                                           [len(x) for x in ro.generations.completion_ids], G)
    matmul_flops, attention_flops = 3 * weights, 3 * attention_fwd  # a step: forward + twice its cost backward
    step_flops = matmul_flops + attention_flops
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    peak = matmul_rate(PROBE_TOKENS, c.hidden_size, c.intermediate_size, dtype)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.shape}: {M} groups x G={G}, "
          f"micro-batch {micro}, completion tokens {ro.generations.num_tokens}; {args.precision} matmul peak "
          f"{peak:.0f} GFLOP/s ({PROBE_TOKENS}x{c.hidden_size} @ {c.hidden_size}x{c.intermediate_size}); step: "
          f"{matmul_flops / 1e9:.0f} GFLOP in projections and head, {attention_flops / 1e9:.0f} in attention")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    precision = "bf16" if args.precision == "bf16" else "none"
    for attention in args.attention:
        cfg.algo.packed_attention = attention
        learner = Learner(model, cfg.algo, cfg.optimizer, pad_id=tok.pad_token_id, temperature=1.0,
                          total_steps=10, precision=precision)
        rows = ro.group_slice(0, M)
        learner.step(ro, rows)  # warm-up: kernels chosen, optimizer state allocated
        model.load_state_dict(state)
        step = learner.optimizer.step

        def profiled_step(*a, __step=step, **k):
            with torch.profiler.record_function("rapid::optimizer"):
                return __step(*a, **k)

        learner.optimizer.step = profiled_step
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            start = time.perf_counter()
            learner.step(ro, rows)
            wall = time.perf_counter() - start
        learner.optimizer.step = step
        model.load_state_dict(state)
        totals: dict[str, float] = defaultdict(float)
        ops: dict[str, float] = defaultdict(float)
        events = prof.events()
        in_optimizer = [e.time_range for e in events if e.name == "rapid::optimizer"]
        for e in events:
            if e.name.startswith("rapid::") or e.self_cpu_time_total <= 0:
                continue
            opt = any(r.start <= e.time_range.start and e.time_range.end <= r.end for r in in_optimizer)
            totals[kind(e.name, opt)] += e.self_cpu_time_total / 1e6
            ops[e.name] += e.self_cpu_time_total / 1e6
        total = sum(totals.values())
        print(f"\n{attention}: the step took {wall:.1f} s under the profiler, {total:.1f} s of it in ops")
        for k in ("matmul", "attention", "gather", "elementwise", "copy/cast", "optimizer", "other"):
            extra = ""
            if k == "matmul" and totals[k]:
                rate = matmul_flops / totals[k] / 1e9
                extra = f"   {rate:.0f} GFLOP/s, {rate / peak:.0%} of peak"
            if k == "attention" and totals[k]:
                extra = f"   {attention_flops / totals[k] / 1e9:.0f} GFLOP/s on the pairs the mask keeps"
            print(f"  {k:<12}{totals[k]:>8.2f} s {totals[k] / total:>6.1%}{extra}")
        print(f"  step FLOP rate over all op time: {step_flops / total / 1e9:.0f} GFLOP/s, "
              f"{step_flops / total / 1e9 / peak:.0%} of peak")
        print(f"  top {args.top} ops by self time:")
        for name, t in sorted(ops.items(), key=lambda kv: -kv[1])[: args.top]:
            print(f"    {t:>7.2f} s {t / total:>6.1%}  {name}")


if __name__ == "__main__":
    main()
