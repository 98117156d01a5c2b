# one-off probe (issue 29): warm pi_old pass and optimizer step of one Learner, fp32 / bf16 autocast / bf16 weights,
# GSM8K G=8 shape of bench_update.py; arms given on the command line: fp32 autocast purebf16
import sys, time, torch
sys.path.insert(0, "scripts")
from bench_update import rollouts
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
for arm in sys.argv[1:]:
    if arm == "purebf16":
        model.to(torch.bfloat16); prec = "none"
    else:
        model.to(torch.float32); prec = "bf16" if arm == "autocast" else "none"
    L = Learner(model, cfg.algo, cfg.optimizer, pad_id=tok.pad_token_id, temperature=1.0, total_steps=10, precision=prec)
    for i in range(3):
        t = time.perf_counter(); L.logprobs(ro, rows); lp = time.perf_counter() - t
        t = time.perf_counter(); L.step(ro, rows); st = time.perf_counter() - t
        print(arm, i, f"logprobs {lp:.2f} s step {st:.2f} s", flush=True)
    model.to(torch.float32); model.load_state_dict(state)
