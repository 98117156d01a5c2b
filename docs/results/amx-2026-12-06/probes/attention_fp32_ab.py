# one-off probe (issue 29): with attention_fp32.diff applied to src/rapid_cli/policy.py, the segmented attention in
# fp32 (ATTN_FP32=True) or bf16 inside a bf16-autocast step, alternating in one Learner; GSM8K G=8 shape
import sys, time, torch
sys.path.insert(0, "scripts")
from bench_update import rollouts
from rapid_cli.config import compose_config
from rapid_cli.learner import Learner
from rapid_cli import policy
from rapid_cli.policy import load_policy
from rapid_cli.tasks import make_task
torch.manual_seed(0)
cfg = compose_config(["model=smollm2-135m", "algo.prompts_per_step=8", "optimizer.lr=1e-5", "logger.wandb.mode=disabled",
    "task=gsm8k", "algo.group_size=8", "algo.micro_batch_size=16", "task.source=offline"])
model, tok, _ = load_policy(cfg.model, torch.device("cpu"), cfg.cache_dir)
task = make_task(cfg.task, seed=0, cache_dir=cfg.cache_dir)
ro = rollouts(task, tok, cfg, (50, 256), 8, 8, seed=8)
rows = ro.group_slice(0, 8)
L = Learner(model, cfg.algo, cfg.optimizer, pad_id=tok.pad_token_id, temperature=1.0, total_steps=100, precision="bf16")
L.step(ro, rows)
for i in range(3):
    for flag in (False, True):
        policy.ATTN_FP32 = flag
        t = time.perf_counter(); L.logprobs(ro, rows); lp = time.perf_counter() - t
        t = time.perf_counter(); L.step(ro, rows); st = time.perf_counter() - t
        print(flag, i, f"logprobs {lp:.2f} s step {st:.2f} s", flush=True)
