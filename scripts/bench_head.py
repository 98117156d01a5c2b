"""The packed path's LM head (policy._HeadLogprobs: log pi(target) a chunk of rows at a time, forward and
backward, without keeping [N, vocab] logits) against its earlier versions, alternating in one process, on
random hidden states at SmolLM2-135M's shape:
  out of place  the code before 2026-12-05: every pass over a 64 MiB chunk of logits made a new tensor
  chunk casts   the code before 2026-12-06 (bf16 only; in fp32 it is today's): under bf16 autocast every chunk
                cast the whole [vocab, hidden] weight again (autocast caches casts of a parameter, not of
                weight.T), and each product's fp32 input again

    .venv/bin/python scripts/bench_head.py                 # 4096 positions, hidden 576, vocab 49152, fp32
    .venv/bin/python scripts/bench_head.py --tokens 9119 --repeats 5 --precision bf16

Prints the best forward+backward seconds of each over --repeats, each one's ratio to today's head, the largest
difference of their log-probs and gradients (0 in fp32 at temperature 1: the same operations in another order of
allocation; bf16 rounding where the order of the casts differs), and the achieved rate of the head's matrix
products (8 N H V FLOPs: the forward's logits, the backward's recomputed logits, d_hidden and d_weight) beside a
matrix product of the same shape and precision measured in this run.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def out_of_place():
    import torch

    class Head(torch.autograd.Function):
        """_HeadLogprobs as it was: division, log-sum-exp, negation, product each a new [n, V] tensor."""

        @staticmethod
        def forward(ctx, hidden, weight, targets, temperature, rows):
            out, lse = torch.empty(hidden.shape[0]), torch.empty(hidden.shape[0])
            for s in range(0, hidden.shape[0], rows):
                logits = (hidden[s : s + rows] @ weight.T).float() / temperature
                lse[s : s + rows] = torch.logsumexp(logits, dim=-1)
                out[s : s + rows] = logits.gather(-1, targets[s : s + rows, None]).squeeze(-1) - lse[s : s + rows]
            ctx.save_for_backward(hidden, weight, targets, lse)
            ctx.temperature, ctx.rows = temperature, rows
            return out

        @staticmethod
        def backward(ctx, grad):
            hidden, weight, targets, lse = ctx.saved_tensors
            T, rows = ctx.temperature, ctx.rows
            d_hidden, d_weight = torch.zeros_like(hidden), torch.zeros_like(weight)
            for s in range(0, hidden.shape[0], rows):
                h, g = hidden[s : s + rows], grad[s : s + rows]
                logits = (h @ weight.T).float() / T
                d_logits = -(logits - lse[s : s + rows, None]).exp() * g[:, None]
                d_logits.scatter_add_(-1, targets[s : s + rows, None], g[:, None])
                d_logits /= T
                d_hidden[s : s + rows] = d_logits @ weight
                d_weight += d_logits.T @ h
            return d_hidden, d_weight, None, None, None

    return Head.apply


def chunk_casts():
    import torch

    from rapid_cli.policy import _head_logits

    class Head(torch.autograd.Function):
        """_HeadLogprobs of 2026-12-05: in place, but the weight cast to bf16 by autocast in every chunk."""

        @staticmethod
        def forward(ctx, hidden, weight, targets, temperature, rows):
            out, lse = torch.empty(hidden.shape[0]), torch.empty(hidden.shape[0])
            for s in range(0, hidden.shape[0], rows):
                logits = _head_logits(hidden[s : s + rows], weight, temperature)
                picked = logits.gather(-1, targets[s : s + rows, None]).squeeze(-1)
                top = logits.amax(-1)
                lse[s : s + rows] = logits.sub_(top[:, None]).exp_().sum(-1).log_() + top
                out[s : s + rows] = picked - lse[s : s + rows]
            ctx.save_for_backward(hidden, weight, targets, lse)
            ctx.temperature, ctx.rows = temperature, rows
            return out

        @staticmethod
        def backward(ctx, grad):
            hidden, weight, targets, lse = ctx.saved_tensors
            T, rows = ctx.temperature, ctx.rows
            d_hidden, d_weight = torch.zeros_like(hidden), torch.zeros_like(weight)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                for s in range(0, hidden.shape[0], rows):
                    h, g = hidden[s : s + rows], grad[s : s + rows, None] / T
                    d_logits = _head_logits(h, weight, T).sub_(lse[s : s + rows, None]).exp_().mul_(-g)
                    d_logits.scatter_add_(-1, targets[s : s + rows, None], g)
                    d_hidden[s : s + rows] = (d_logits @ weight).to(hidden.dtype)
                    d_weight += d_logits.T @ h
            return d_hidden, d_weight, None, None, None

    return Head.apply


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--hidden", type=int, default=576)
    ap.add_argument("--vocab", type=int, default=49152)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="bf16: under bf16 autocast")
    args = ap.parse_args()
    import torch

    from bench_update import matmul_rate
    from rapid_cli.policy import HEAD_CHUNK_BYTES, _HeadLogprobs

    torch.manual_seed(0)
    N, H, V = args.tokens, args.hidden, args.vocab
    hidden = torch.randn(N, H, requires_grad=True)
    weight = (torch.randn(V, H) * 0.02).requires_grad_()
    targets = torch.randint(0, V, (N,))
    rows = max(1, HEAD_CHUNK_BYTES // (4 * V))
    bf16 = args.precision == "bf16"
    heads = {"out of place": out_of_place(), **({"chunk casts": chunk_casts()} if bf16 else {}),
             "today": _HeadLogprobs.apply}
    seconds: dict[str, list[float]] = {name: [] for name in heads}
    results = {}
    for _ in range(args.repeats):
        for name, head in heads.items():
            hidden.grad = weight.grad = None
            start = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                out = head(hidden, weight, targets, args.temperature, rows)
                out.sum().backward()
            seconds[name].append(time.perf_counter() - start)
            results[name] = (out.detach(), hidden.grad, weight.grad)
    peak = matmul_rate(rows, H, V, torch.bfloat16 if bf16 else torch.float32)
    flops = 8 * N * H * V
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; head {N} positions x {H} @ {H} x {V}, "
          f"chunks of {rows} rows, T={args.temperature}, {args.precision}; matmul {rows}x{H} @ {H}x{V} in "
          f"{args.precision}: {peak:.0f} GFLOP/s")
    for name in heads:
        best = min(seconds[name])
        print(f"  {name:<13} {best:6.2f} s (best of {args.repeats})  {flops / best / 1e9:6.0f} GFLOP/s, "
              f"{flops / best / 1e9 / peak:.0%} of the matmul rate")
    today = min(seconds["today"])
    for name in heads:
        if name != "today":
            diffs = [(a - b).abs().max().item() for a, b in zip(results[name], results["today"], strict=True)]
            print(f"  today vs {name}: {min(seconds[name]) / today:.2f}x faster; max |difference| of log-probs, "
                  f"d_hidden, d_weight: {', '.join(f'{d:.1e}' for d in diffs)}")


if __name__ == "__main__":
    main()
