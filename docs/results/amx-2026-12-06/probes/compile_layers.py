# one-off probe (issue 29): the decoder layers under torch.compile(dynamic=True), bf16 autocast, the segmented
# attention left out of the graphs (torch.compiler.disable); GSM8K G=8 shape
import sys, time, torch
sys.path.insert(0, "scripts")
from bench_update import rollouts
from rapid_cli.config import compose_config
from rapid_cli.learner import Learner
from rapid_cli import policy
from rapid_cli.policy import load_policy
from rapid_cli.tasks import make_task
import transformers
from transformers.modeling_utils import AttentionInterface
torch.manual_seed(0)
cfg = compose_config(["model=smollm2-135m", "algo.prompts_per_step=8", "optimizer.lr=1e-5", "logger.wandb.mode=disabled",
    "task=gsm8k", "algo.group_size=8", "algo.micro_batch_size=16", "task.source=offline"])
model, tok, _ = load_policy(cfg.model, torch.device("cpu"), cfg.cache_dir)
task = make_task(cfg.task, seed=0, cache_dir=cfg.cache_dir)
ro = rollouts(task, tok, cfg, (50, 256), 8, 8, seed=8)
rows = ro.group_slice(0, 8)
print(policy.SEGMENT_ATTENTION)
AttentionInterface.register(policy.SEGMENT_ATTENTION, torch.compiler.disable(policy._segment_attention))
t0 = time.perf_counter()
for layer in model.model.layers:
    layer.compile(dynamic=True)
L = Learner(model, cfg.algo, cfg.optimizer, pad_id=tok.pad_token_id, temperature=1.0, total_steps=10, precision="bf16")
for i in range(4):
    t = time.perf_counter(); L.logprobs(ro, rows); lp = time.perf_counter() - t
    t = time.perf_counter(); L.step(ro, rows); st = time.perf_counter() - t
    print(i, f"logprobs {lp:.2f} s step {st:.2f} s", flush=True)
