"""The update pass, packed (algo.packing=true: each prompt encoded once, completions without padding, the
LM head over completion tokens only, a chunk at a time) against padded rows (algo.packing=false), on the
same rollouts in the same process, alternating, so the machine's noise hits both alike.

    .venv/bin/python scripts/bench_update.py                  # the two shapes below, SmolLM2-135M, fp32 CPU
    .venv/bin/python scripts/bench_update.py --shapes demo --repeats 5
    .venv/bin/python scripts/bench_update.py -- model=tiny    # any config override after --

Shapes (prompts rendered with the model's chat template, as training does):
  demo   the cpu-demo round: arith prompts, completions of 4-12 tokens, G=4, M=8, micro-batch 32
  gsm8k  real GSM8K prompts, completions of 50-256 tokens, G=4 and G=8, M=8, micro-batch 8 and 16
  skip   a whole RAPID round (A=4, M=8, G=4, GSM8K prompts, completions of 50-256 tokens) at GSM8K's reward
         rate with SmolLM2-135M (1 group in 12 holds a correct answer, docs/results/gsm8k): the pi_old pass and
         the round's 4 optimizer steps with algo.skip_zero_advantage off and on, in this process

For each: the time of the round's old-log-prob pass (no gradient) and of one optimizer step over one
mini-batch (forward, backward, AdamW), the median of --repeats, and the peak resident memory each
adds over what the process held before it (Linux: the peak is reset through /proc/self/clear_refs).
Completion token ids are random (the update's cost depends on their lengths, not their content).
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


def rollouts(task, tok, cfg, lengths: tuple[int, int], group_size: int, groups: int, seed: int):
    from rapid_cli.types import Generations, Rollouts

    rng = random.Random(seed)
    problems = task.train[:groups]
    prompts = [task.prompt_ids(p, tok, cfg.model.chat_template) for p in problems]
    ids = [[rng.randrange(10, len(tok)) for _ in range(rng.randint(*lengths))] for _ in range(groups * group_size)]
    gens = Generations(completion_ids=ids, texts=[""] * len(ids), logprobs=None, finish_reasons=["length"] * len(ids))
    rewards = [float(rng.random() < 0.4) for _ in ids]
    return Rollouts(problems, prompts, gens, rewards, group_size)


def bench(name: str, cfg, model, tok, task, lengths, group_size: int, micro: int, repeats: int) -> None:
    from rapid_cli.learner import Learner

    cfg.algo.group_size, cfg.algo.micro_batch_size = group_size, micro
    M = cfg.algo.prompts_per_step
    ro = rollouts(task, tok, cfg, lengths, group_size, M, seed=group_size)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    tokens = sum(len(c) for c in ro.generations.completion_ids)
    prompt_tokens = sum(len(p) for p in ro.prompt_ids) * group_size
    results: dict[tuple[bool, str], list[tuple[float, float]]] = {}
    for _ in range(repeats):
        for packing in (False, True):
            cfg.algo.packing = packing
            learner = Learner(model, cfg.algo, cfg.optimizer, pad_id=tok.pad_token_id, temperature=1.0, total_steps=10)
            results.setdefault((packing, "logprobs"), []).append(measured(lambda: learner.logprobs(ro)))  # noqa: B023
            rows = ro.group_slice(0, M)
            results.setdefault((packing, "step"), []).append(measured(lambda: learner.step(ro, rows)))  # noqa: B023
            model.load_state_dict(state)
    print(f"\n{name}: {M} groups x G={group_size}, micro-batch {micro}, prompt tokens {prompt_tokens} "
          f"(x G as padded rows), completion tokens {tokens}")
    print(f"  {'pass':<10}{'padded s':>10}{'packed s':>10}{'speed-up':>10}"
          f"{'padded MiB':>12}{'packed MiB':>12}{'mem ratio':>10}")
    for part in ("logprobs", "step"):
        old_s = statistics.median(t for t, _ in results[False, part])
        new_s = statistics.median(t for t, _ in results[True, part])
        old_m = statistics.median(m for _, m in results[False, part])
        new_m = statistics.median(m for _, m in results[True, part])
        print(f"  {part:<10}{old_s:>10.2f}{new_s:>10.2f}{old_s / new_s:>9.2f}x{old_m:>12.0f}{new_m:>12.0f}"
              f"{new_m / max(old_m, 1e-9):>9.2f}x")


def bench_skipping(cfg, model, tok, task, repeats: int) -> None:
    """A RAPID round's pi_old pass and its A steps, every row computed vs the zero-gradient groups left out."""
    from rapid_cli.behaviour import BehaviourLogprobs
    from rapid_cli.distributed import Dist
    from rapid_cli.learner import Learner

    a = cfg.algo
    A, M, G = 4, 8, 4
    a.steps_per_generation, a.prompts_per_step, a.group_size, a.micro_batch_size = A, M, G, 8
    ro = rollouts(task, tok, cfg, (50, 256), G, A * M, seed=12)
    rng = random.Random(12)
    solved = [rng.random() < 1 / 12 for _ in range(A * M)]  # a group with a correct answer: 1 and G-1 draws
    ro.rewards = [float(i == 0 or rng.random() < 0.3) if solved[g] else 0.0 for g in range(A * M) for i in range(G)]
    mixed = sum(len(set(ro.rewards[g * G : (g + 1) * G])) > 1 for g in range(A * M))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    results: dict[tuple[bool, str], list[float]] = {}
    for _ in range(repeats):
        for skip in (False, True):
            a.skip_zero_advantage = skip
            learner = Learner(model, a, cfg.optimizer, pad_id=tok.pad_token_id, temperature=1.0, total_steps=10)
            behaviour = BehaviourLogprobs(a, Dist(), {})
            ro.moving = learner.moving_rows(ro, behaviour.own_rows(ro))
            start = time.perf_counter()
            ro.old_logprobs, ro.old_rows = behaviour(learner, ro)
            results.setdefault((skip, "pi_old"), []).append(time.perf_counter() - start)
            start = time.perf_counter()
            steps = [learner.step(ro, ro.group_slice(i * M, M)) for i in range(A)]
            results.setdefault((skip, "update"), []).append(time.perf_counter() - start)
            skipped = sum(s.skipped_rows for s in steps) / sum(s.rows for s in steps)
            model.load_state_dict(state)
    print(f"\nskip: RAPID round A={A} x M={M} x G={G}, {mixed} of {A * M} groups with unequal rewards, "
          f"{skipped:.0%} of the update's rows left out, completion tokens {ro.generations.num_tokens}")
    print(f"  {'pass':<10}{'all rows s':>12}{'skipping s':>12}{'speed-up':>10}")
    for part in ("pi_old", "update"):
        old_s, new_s = (statistics.median(results[skip, part]) for skip in (False, True))
        print(f"  {part:<10}{old_s:>12.2f}{new_s:>12.2f}{old_s / new_s:>9.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", nargs="+", default=["demo", "gsm8k", "skip"], choices=["demo", "gsm8k", "skip"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") is None:  # glibc reads it at start: start again with it
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"})
    sys.stdout.reconfigure(line_buffering=True)
    import torch

    from rapid_cli.config import compose_config
    from rapid_cli.policy import load_policy
    from rapid_cli.tasks import make_task

    torch.manual_seed(0)
    base = ["model=smollm2-135m", "algo.prompts_per_step=8", "optimizer.lr=1e-5", "logger.wandb.mode=disabled",
            *args.overrides]
    cfg = compose_config([*base, "task=arith"])
    model, tok, _ = load_policy(cfg.model, torch.device("cpu"), cfg.cache_dir)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, model {cfg.model.name}, "
          f"vocab {model.config.vocab_size}")
    if "demo" in args.shapes:
        task = make_task(cfg.task, seed=0)
        bench("demo (arith)", cfg, model, tok, task, (4, 12), group_size=4, micro=32, repeats=args.repeats)
    if "gsm8k" in args.shapes:
        cfg = compose_config([*base, "task=gsm8k", "task.source=offline"])
        task = make_task(cfg.task, seed=0, cache_dir=cfg.cache_dir)
        for G, micro in ((4, 8), (8, 16)):
            bench(f"gsm8k G={G}", cfg, model, tok, task, (50, 256), group_size=G, micro=micro, repeats=args.repeats)
    if "skip" in args.shapes:
        cfg = compose_config([*base, "task=gsm8k", "task.source=offline"])
        bench_skipping(cfg, model, tok, make_task(cfg.task, seed=0, cache_dir=cfg.cache_dir), args.repeats)


if __name__ == "__main__":
    main()
