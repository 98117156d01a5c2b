"""LoRA against full fine-tuning, in one process on the same model: what a round's weight sync into the vLLM
engine costs (full: the trainer's state_dict; LoRA merged: W + scale * B @ A computed for every adapted layer,
then the same load), what one optimizer step over a cpu-demo mini-batch costs, and how much the optimizer holds.

    .venv/bin/python scripts/bench_lora.py                     # SmolLM2-135M, vLLM (CPU build), r=16
    .venv/bin/python scripts/bench_lora.py --repeats 5 -- lora.r=64 model=qwen-0.5b

The sync is timed after the engine has started and been synced once (as in a run from round 2 on). The
update step uses the demo's shape (8 arith prompts x G=4, completions of 4-12 tokens, one micro-batch).
Medians of --repeats; every timing alternates full and LoRA so the machine's noise hits both alike.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "disabled")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def optimizer_mib(learner) -> float:
    return sum(t.numel() * t.element_size() for s in learner.optimizer.state.values() for t in s.values()
               if hasattr(t, "numel")) / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    sys.stdout.reconfigure(line_buffering=True)
    import torch

    from bench_update import rollouts
    from rapid_cli.config import compose_config
    from rapid_cli.learner import Learner
    from rapid_cli.lora import add_adapters, merged_state, trainable_summary
    from rapid_cli.policy import load_policy
    from rapid_cli.samplers import make_sampler
    from rapid_cli.tasks import make_task

    torch.manual_seed(0)
    cfg = compose_config(["model=smollm2-135m", "task=arith", "lora=default", "sampler=vllm", "sampler.kv_cache_gb=0.5",
                          "sampler.max_model_len=512", "algo.prompts_per_step=8", "algo.micro_batch_size=32",
                          "logger.wandb.mode=disabled", *args.overrides])
    full, tok, path = load_policy(cfg.model, torch.device("cpu"), cfg.cache_dir)
    adapted, _, _ = load_policy(cfg.model, torch.device("cpu"), cfg.cache_dir)
    add_adapters(adapted, cfg.lora)
    with torch.no_grad():  # B = 0 at the start; a trained adapter's merge costs the same, give it values
        for name, p in adapted.named_parameters():
            if ".lora_B." in name:
                p.normal_(0, 1e-3)
    sampler = make_sampler(cfg, full, tok, path)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, model {cfg.model.name}, LoRA r={cfg.lora.r} "
          f"alpha={cfg.lora.alpha} on {list(cfg.lora.target_modules)}: trains {trainable_summary(adapted)}")
    sync = {"full": [], "lora": []}
    merge = []
    for _ in range(args.repeats):
        sync["full"].append(timed(lambda: sampler.sync_weights(full.state_dict().items())))
        sync["lora"].append(timed(lambda: sampler.sync_weights(merged_state(adapted))))
        merge.append(timed(lambda: list(merged_state(adapted))))
    task = make_task(cfg.task, seed=0)
    ro = rollouts(task, tok, cfg, (4, 12), group_size=cfg.algo.group_size, groups=cfg.algo.prompts_per_step, seed=0)
    steps = {"full": [], "lora": []}
    learners = {name: Learner(model, cfg.algo, cfg.optimizer, pad_id=tok.pad_token_id, temperature=1.0,
                              total_steps=10) for name, model in (("full", full), ("lora", adapted))}
    rows = ro.group_slice(0, cfg.algo.prompts_per_step)
    for _ in range(args.repeats):
        for name, learner in learners.items():
            steps[name].append(timed(lambda: learner.step(ro, rows)))  # noqa: B023
    med = {k: statistics.median(v) for k, v in sync.items()}
    step = {k: statistics.median(v) for k, v in steps.items()}
    print(f"weight sync into vLLM: full {med['full']:.3f} s, LoRA merged {med['lora']:.3f} s "
          f"({med['lora'] / med['full']:.2f}x; of which the merge alone {statistics.median(merge):.3f} s)")
    print(f"optimizer step (demo mini-batch): full {step['full']:.2f} s, LoRA {step['lora']:.2f} s "
          f"({step['full'] / step['lora']:.2f}x faster with LoRA)")
    held = {name: optimizer_mib(learner) for name, learner in learners.items()}
    print(f"optimizer state: full {held['full']:.0f} MiB, LoRA {held['lora']:.1f} MiB")
    sampler.close()


if __name__ == "__main__":
    main()
