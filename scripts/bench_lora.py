"""LoRA against full fine-tuning, and the two ways to hand a LoRA policy to the vLLM engine, in one process on
the same model:

- weight sync per round: full fine-tuning's state_dict; LoRA merged (`lora.sync=merged`: W + scale * B @ A for
  every adapted layer, then the same load); LoRA adapter (`lora.sync=adapter`: the adapter written to the
  sampler's own directory and registered with an engine started with LoRA enabled);
- generation tokens/s of the merged engine against the adapter-serving one (same prompts, same lengths);
- one optimizer step over a cpu-demo mini-batch (seconds, and the peak resident memory it adds, measured as
  scripts/bench_update.py does), and the optimizer state held;
- QLoRA (`lora=qlora`, the base's linear layers in 4-bit NF4 through bitsandbytes) beside them: its merged sync
  (each weight dequantized, then merged), its optimizer step, and the bytes its model holds against LoRA's.

    .venv/bin/python scripts/bench_lora.py                      # SmolLM2-135M, vLLM (CPU build), r=32
    .venv/bin/python scripts/bench_lora.py --repeats 5 -- lora.r=16 lora.alpha=32   # docs/benchmarks.md's (r=16)
    .venv/bin/python scripts/bench_lora.py --shape qwen-0.5b --repeats 1 --tokens 16   # a bigger preset's shapes

`--shape`: a model of that preset's architecture (scripts/gpu_memory.py's SHAPES) with random weights and the
offline SmolLM2 tokenizer, built here (nothing downloaded): seconds depend on the shapes, not on the values.

Syncs are timed after each engine has started and been synced once (as in a run from round 2 on).
Generation: 32 arith prompts x 4 completions, temperature 1, exactly --tokens new tokens each (no stop).
Medians of --repeats; each repeat alternates the contenders so the machine's noise hits both alike.
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


def random_model(shape: str, cfg) -> str:
    """A directory holding a random-weight model of `shape`'s architecture and the configured model's tokenizer."""
    import atexit
    import shutil
    import tempfile

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gpu_memory import SHAPES
    from rapid_cli.models import resolve_model

    config = next((c for name, c in SHAPES.items() if shape in name.split(", ")), None)
    if config is None:
        sys.exit(f"--shape {shape}: one of {', '.join(SHAPES)}")
    out = Path(tempfile.mkdtemp(prefix=f"rapid-bench-{shape}-"))
    atexit.register(shutil.rmtree, out, True)  # gigabytes of random weights
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(resolve_model(cfg.model, cfg.cache_dir)).save_pretrained(out)
    return str(out)


def model_mib(model) -> float:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--shape", help="a random-weight model of this preset's architecture, e.g. qwen-0.5b")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") is None:  # glibc reads it at start: start again with it
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"})
    sys.stdout.reconfigure(line_buffering=True)
    import torch

    from bench_update import measured, rollouts
    from rapid_cli.config import compose_config
    from rapid_cli.learner import Learner
    from rapid_cli.lora import add_adapters, merged_state, trainable_summary
    from rapid_cli.plan import open_sampler
    from rapid_cli.policy import load_policy
    from rapid_cli.tasks import make_task
    from rapid_cli.types import SamplingParams

    torch.manual_seed(0)
    base = ["model=smollm2-135m", "task=arith", "lora=default", "sampler=vllm", "sampler.kv_cache_gb=0.5",
            "sampler.max_model_len=512", "algo.prompts_per_step=8", "algo.micro_batch_size=32",
            "logger.wandb.mode=disabled", *args.overrides]
    if args.shape:
        base.append(f"model.path={random_model(args.shape, compose_config(base))}")
    cfg = compose_config(base)
    full, tok, path = load_policy(cfg.model, torch.device("cpu"), cfg.cache_dir)
    adapted, _, _ = load_policy(cfg.model, torch.device("cpu"), cfg.cache_dir)
    add_adapters(adapted, cfg.lora)
    quantized, _, _ = load_policy(cfg.model, torch.device("cpu"), cfg.cache_dir,
                                  compose_config([*base, "lora=qlora"]).lora)
    with torch.no_grad():  # B = 0 at the start; a trained adapter costs the same, give it values
        for model in (adapted, quantized):
            for name, p in model.named_parameters():
                if ".lora_B." in name:
                    p.normal_(0, 1e-3)
    merged = open_sampler(cfg, full, tok, path)
    served = open_sampler(compose_config([*base, "lora.sync=adapter"]), adapted, tok, path)
    name = f"{args.shape} (random weights)" if args.shape else cfg.model.name
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, model {name}, LoRA r={cfg.lora.r} "
          f"alpha={cfg.lora.alpha} on {list(cfg.lora.target_modules)}: trains {trainable_summary(adapted)}")
    sync: dict[str, list[float]] = {"full": [], "merged": [], "adapter": [], "qlora": []}
    for _ in range(args.repeats):
        sync["full"].append(timed(lambda: merged.sync_weights(full.state_dict().items())))
        sync["merged"].append(timed(lambda: merged.sync_weights(merged_state(adapted))))
        sync["adapter"].append(timed(lambda: served.sync_weights(())))
        sync["qlora"].append(timed(lambda: merged.sync_weights(merged_state(quantized))))
    task = make_task(cfg.task, seed=0)
    prompts = [task.prompt_ids(p, tok, cfg.model.chat_template) for p in task.train[:32]]
    params = SamplingParams(n=4, temperature=1.0, max_tokens=args.tokens, seed=0)
    rate: dict[str, list[float]] = {"merged": [], "adapter": []}
    for _ in range(args.repeats):
        for name, sampler in (("merged", merged), ("adapter", served)):
            start = time.perf_counter()
            gens = sampler.generate(prompts, params)
            rate[name].append(sum(len(c) for c in gens.completion_ids) / (time.perf_counter() - start))
    merged.close()
    served.close()
    ro = rollouts(task, tok, cfg, (4, 12), group_size=cfg.algo.group_size, groups=cfg.algo.prompts_per_step, seed=0)
    learners = {name: Learner(model, cfg.algo, cfg.optimizer, pad_id=tok.pad_token_id, temperature=1.0,
                              total_steps=10) for name, model in (("full", full), ("lora", adapted),
                                                                  ("qlora", quantized))}
    rows = ro.group_slice(0, cfg.algo.prompts_per_step)
    steps: dict[str, list[tuple[float, float]]] = {name: [] for name in learners}
    for _ in range(args.repeats):
        for name, learner in learners.items():
            steps[name].append(measured(lambda: learner.step(ro, rows)))  # noqa: B023
    s = {k: statistics.median(v) for k, v in sync.items()}
    g = {k: statistics.median(v) for k, v in rate.items()}
    step = {k: statistics.median(t for t, _ in v) for k, v in steps.items()}
    peak = {k: statistics.median(m for _, m in v) for k, v in steps.items()}
    print(f"weight sync per round: full {s['full']:.3f} s, LoRA merged {s['merged']:.3f} s "
          f"({s['merged'] / s['full']:.2f}x full), LoRA adapter {s['adapter']:.3f} s "
          f"({s['adapter'] / s['full']:.2f}x), "
          f"QLoRA merged {s['qlora']:.3f} s ({s['qlora'] / s['full']:.2f}x)")
    print(f"generation: merged engine {g['merged']:.0f} tokens/s, adapter-serving engine {g['adapter']:.0f} tokens/s "
          f"({g['adapter'] / g['merged']:.2f}x)")
    print(f"optimizer step (demo mini-batch): full {step['full']:.2f} s, LoRA {step['lora']:.2f} s "
          f"(LoRA {step['full'] / step['lora']:.2f}x as fast), QLoRA {step['qlora']:.2f} s "
          f"({step['full'] / step['qlora']:.2f}x"
          f" as fast as full, {step['lora'] / step['qlora']:.2f}x LoRA); peak memory it adds: full {peak['full']:.0f} "
          f"MiB, LoRA {peak['lora']:.0f} MiB, QLoRA {peak['qlora']:.0f} MiB")
    held = {name: optimizer_mib(learner) for name, learner in learners.items()}
    print(f"optimizer state: full {held['full']:.0f} MiB, LoRA {held['lora']:.1f} MiB, QLoRA {held['qlora']:.1f} MiB")
    weights = {name: model_mib(model) for name, model in (("lora", adapted), ("qlora", quantized))}
    print(f"the trainer's model (weights, adapters and 4-bit statistics): LoRA {weights['lora']:.0f} MiB, QLoRA "
          f"{weights['qlora']:.0f} MiB ({weights['qlora'] / weights['lora']:.2f}x)")


if __name__ == "__main__":
    main()
