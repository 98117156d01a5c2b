# one-off probe (issue 29), with attention_dtype.diff applied to src/rapid_cli/policy.py: the segmented attention
# inside a bf16-autocast step computed in float32 (what main does: transformers' rotary hands q, k over in float32
# and the attention runs with autocast off) or in bf16 (the diff), alternating in one Learner, then a float32
# Learner's warm steps; GSM8K G=8 shape of bench_update.py. From the repository root, after `git apply` of the diff:
# .venv/bin/python docs/results/amx-2026-12-07/attention_dtype_ab.py 3   (2026-12-07 it was stopped before the fp32 arm)
import sys, time, torch
sys.path.insert(0, "scripts")
from bench_update import rollouts
from rapid_cli import policy
from rapid_cli.config import compose_config
from rapid_cli.learner import Learner
from rapid_cli.policy import load_policy
from rapid_cli.tasks import make_task
torch.manual_seed(0)
cfg = compose_config(["model=smollm2-135m", "algo.prompts_per_step=8", "optimizer.lr=1e-5", "logger.wandb.mode=disabled",
    "task=gsm8k", "algo.group_size=8", "algo.micro_batch_size=16", "task.source=offline"])
model, tok, _ = load_policy(cfg.model, torch.device("cpu"), cfg.cache_dir)
task = make_task(cfg.task, seed=0, cache_dir=cfg.cache_dir)
ro = rollouts(task, tok, cfg, (50, 256), 8, 8, seed=8)
rows = ro.group_slice(0, 8)
state = {k: v.clone() for k, v in model.state_dict().items()}
bf16_attention = policy._attention_dtype
arms = {"fp32-attention": lambda q: q.dtype, "bf16-attention": bf16_attention}
L = Learner(model, cfg.algo, cfg.optimizer, pad_id=tok.pad_token_id, temperature=1.0, total_steps=100, precision="bf16")
L.step(ro, rows)  # warm-up: AdamW's state
for i in range(int(sys.argv[1]) if len(sys.argv) > 1 else 3):
    for arm, fn in arms.items():
        policy._attention_dtype = fn
        t = time.perf_counter(); L.logprobs(ro, rows); lp = time.perf_counter() - t
        t = time.perf_counter(); L.step(ro, rows); st = time.perf_counter() - t
        print(arm, i, f"logprobs {lp:.2f} s step {st:.2f} s", flush=True)
policy._attention_dtype = bf16_attention
model.load_state_dict(state)
L = Learner(model, cfg.algo, cfg.optimizer, pad_id=tok.pad_token_id, temperature=1.0, total_steps=100, precision="none")
L.step(ro, rows)
for i in range(2):
    t = time.perf_counter(); L.logprobs(ro, rows); lp = time.perf_counter() - t
    t = time.perf_counter(); L.step(ro, rows); st = time.perf_counter() - t
    print("fp32", i, f"logprobs {lp:.2f} s step {st:.2f} s", flush=True)
