"""The peer run: TRL's GRPOTrainer on the same model, prompts, G, completion length, lr and sample budget.

    .venv/bin/pip install --no-deps --target .bench-site trl==1.16.0      # benchmark environment only
    PYTHONPATH=.bench-site .venv/bin/python scripts/trl_grpo.py --out runs/trl-seed0 --seed 0

Prompts come from rapid's own task (chat template, same wording), rewards from rapid's reward
function, and the trained model is evaluated afterwards with rapid's evaluator, so only the trainer
differs. Writes metrics.jsonl (rapid's keys: reward/mean, eval/pass@1, time/elapsed, time/eval) so
`scripts/compare.py` and `rapid report` read it like a rapid run. TRL generates with transformers
here (its vLLM modes need a CUDA build of vLLM).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "disabled")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("overrides", nargs="*", help="rapid config overrides for model/task/sampler/algo/eval (as for rapid train)")
    args = ap.parse_args()

    import torch
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from rapid_cli.config import compose_config
    from rapid_cli.evaluate import eval_params, evaluate
    from rapid_cli.models import resolve_model
    from rapid_cli.policy import load_policy
    from rapid_cli.samplers.hf import HFSampler
    from rapid_cli.tasks import make_task
    from rapid_cli.trainer import PromptStream

    cfg = compose_config([*args.overrides, f"seed={args.seed}"])
    a, s = cfg.algo, cfg.sampler
    torch.manual_seed(args.seed)
    task = make_task(cfg.task, seed=args.seed, cache_dir=cfg.cache_dir, reward_cfg=cfg.reward)
    model_dir = resolve_model(cfg.model, cfg.cache_dir)
    total = cfg.train.rounds * a.steps_per_generation * a.prompts_per_step  # prompts in the whole budget
    problems = PromptStream(task.train, args.seed).next(total)  # the same prompt order rapid uses
    by_question = {p.question: p for p in problems}
    data = Dataset.from_list([{"prompt": task.messages(p), "question": p.question} for p in problems])

    def reward(completions, question, **_):
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return task.rewards(texts, [by_question[q] for q in question])

    args.out.mkdir(parents=True, exist_ok=True)
    steps = total // a.prompts_per_step
    config = GRPOConfig(
        output_dir=str(args.out / "trl"), seed=args.seed, learning_rate=cfg.optimizer.lr, lr_scheduler_type="constant",
        per_device_train_batch_size=a.prompts_per_step * a.group_size, gradient_accumulation_steps=1,
        num_generations=a.group_size, max_completion_length=s.max_tokens, temperature=s.temperature, top_p=s.top_p,
        beta=0.04, epsilon=0.2, loss_type="grpo", scale_rewards="group", max_steps=steps, num_iterations=1,
        logging_steps=1, save_strategy="no", report_to="none", use_cpu=not torch.cuda.is_available(),
        bf16=False, max_grad_norm=cfg.optimizer.max_grad_norm or 1e9, shuffle_dataset=False, disable_dropout=True,
    )
    rows: list[dict] = []
    start = time.perf_counter()

    from transformers import TrainerCallback

    class Log(TrainerCallback):
        def on_train_begin(self, *_, **__):  # rapid's clock also starts after the model (and engine) are loaded
            nonlocal start
            start = time.perf_counter()

        def on_log(self, _args, state, _control, logs=None, **_):
            if logs and "reward" in logs:
                rows.append({"round": state.global_step, "reward/mean": logs["reward"],
                             "time/elapsed": time.perf_counter() - start})

    trainer = GRPOTrainer(model=model_dir, reward_funcs=reward, args=config, train_dataset=data, callbacks=[Log()])
    trainer.train()
    train_s = time.perf_counter() - start
    trainer.model.save_pretrained(args.out / "model")
    trainer.processing_class.save_pretrained(args.out / "model")

    trained = compose_config([*args.overrides, f"model.path={args.out / 'model'}"]).model
    model, tok, _ = load_policy(trained, torch.device("cpu"), cfg.cache_dir)
    sampler = HFSampler(model, tok, batch_size=s.batch_size)
    problems_eval = task.test[: cfg.eval.limit] if cfg.eval.limit else task.test
    prompts = [task.prompt_ids(p, tok, cfg.model.chat_template) for p in problems_eval]
    t0 = time.perf_counter()
    final = evaluate(task, problems_eval, prompts, sampler, eval_params(cfg.eval, cfg.sampler.max_tokens, cfg.seed), cfg.eval.k)
    eval_s = time.perf_counter() - t0
    rows.append({"round": steps, **final, "time/eval": eval_s, "time/elapsed": train_s + eval_s})
    with (args.out / "metrics.jsonl").open("w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    print(f"TRL GRPOTrainer: {steps} steps in {train_s:.1f} s, final eval {final}")


if __name__ == "__main__":
    main()
