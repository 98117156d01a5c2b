"""The peer run: TRL's GRPOTrainer on the same model, prompts, G, completion length, lr and sample budget.

    .venv/bin/pip install --no-deps --target .bench-site trl==1.16.0      # benchmark environment only
    PYTHONPATH=.bench-site .venv/bin/python scripts/trl_grpo.py --out runs/trl-seed0 --seed 0 \\
        [--steps-per-generation 4] [rapid overrides, e.g. experiment=paper-gsm8k-long]

Prompts come from rapid's own task (chat template, same wording, same order), rewards from rapid's reward
function, and the model is evaluated with rapid's evaluator and sampler (the configured one: vLLM, its weights
synced from TRL's model) after every `eval.every_samples` completions and at the end, so only the trainer
differs. The budget is rapid's: train.samples (or train.rounds x A x M x G completions).
`--steps-per-generation 4` is TRL's own "generate once, step several times": one generation batch of 4 x M
prompts, 4 optimizer steps of M prompts on it, PPO ratios against the log-probs taken at generation.

Writes metrics.jsonl with rapid's keys (reward/mean, eval/pass@k, time/elapsed, time/eval, time/generate,
time/update, perf/samples), a row per optimizer step as it happens, so `rapid report` and scripts/compare.py
read it like a rapid run (.hydra/overrides.yaml labels it `trainer=trl trl.steps_per_generation=N`).
time/generate is all of TRL's generation phase (sampling with transformers: its vLLM
modes need a CUDA build of vLLM; the rewards; the old and reference log-probs), time/update the rest of the
step. A checkpoint every `--save-steps` optimizer steps: the same command again continues from the newest one,
its clock from that step's row.
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
    ap.add_argument("--steps-per-generation", type=int, default=1,
                    help="TRL's steps_per_generation: optimizer steps on one generation batch")
    ap.add_argument("--save-steps", type=int, default=16, help="optimizer steps between checkpoints (0: none)")
    ap.add_argument("overrides", nargs="*",
                    help="rapid config overrides for model/task/sampler/algo/eval (as for rapid train)")
    args = ap.parse_args()

    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from transformers.trainer_utils import get_last_checkpoint
    from trl import GRPOConfig, GRPOTrainer

    from rapid_cli.config import compose_config
    from rapid_cli.evaluate import eval_params, eval_problems, evaluate
    from rapid_cli.models import resolve_model
    from rapid_cli.plan import make_plan, open_sampler
    from rapid_cli.tasks import make_task
    from rapid_cli.trainer import PromptStream
    from rapid_cli.validation import planned_rounds

    cfg = compose_config([*args.overrides, f"seed={args.seed}"])
    a, s, spg = cfg.algo, cfg.sampler, args.steps_per_generation
    per_step = a.prompts_per_step * a.group_size  # completions per optimizer step
    budget = planned_rounds(cfg) * a.steps_per_generation * per_step
    steps = budget // per_step
    every = (cfg.eval.every_samples or budget) // per_step  # optimizer steps between evaluations
    if steps % spg or (args.save_steps and args.save_steps % spg) or every % spg:
        raise SystemExit(f"--steps-per-generation {spg} must divide the {steps} steps, --save-steps and the "
                         f"{every} steps between evaluations")
    if cfg.task.stop:  # TRL would sample past the strings rapid stops at: the two would not compare like for like
        raise SystemExit(f"task.stop={list(cfg.task.stop)}: this script does not pass stop strings to TRL's sampler; "
                         "compare with task.stop='[]'")
    torch.manual_seed(args.seed)
    task = make_task(cfg.task, seed=args.seed, cache_dir=cfg.cache_dir, reward_cfg=cfg.reward)
    model_dir = resolve_model(cfg.model, cfg.cache_dir)
    problems = PromptStream(task.train, args.seed).next(budget // a.group_size)  # rapid's prompt order
    by_question = {p.question: p for p in problems}
    data = Dataset.from_list([{"prompt": task.messages(p), "question": p.question} for p in problems])

    def reward(completions, question, **_):
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return task.rewards(texts, [by_question[q] for q in question])

    plan = make_plan(cfg, torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    config = GRPOConfig(
        output_dir=str(args.out / "trl"), seed=args.seed, learning_rate=cfg.optimizer.lr, lr_scheduler_type="constant",
        per_device_train_batch_size=per_step, gradient_accumulation_steps=1, steps_per_generation=spg,
        num_generations=a.group_size, max_completion_length=s.max_tokens, temperature=s.temperature, top_p=s.top_p,
        beta=0.04, epsilon=0.2, loss_type="grpo", scale_rewards="group", max_steps=steps, num_iterations=1,
        logging_steps=1, save_strategy="steps" if args.save_steps else "no", save_steps=args.save_steps or 1,
        save_only_model=False, report_to="none", use_cpu=not torch.cuda.is_available(), bf16=plan.precision == "bf16",
        max_grad_norm=cfg.optimizer.max_grad_norm or 1e9, shuffle_dataset=False, disable_dropout=True,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    # what `rapid report` reads to find and label a run: beside rapid's runs this one reads as trainer=trl
    (args.out / ".hydra").mkdir(exist_ok=True)
    (args.out / ".hydra" / "overrides.yaml").write_text("".join(
        f"- {o}\n" for o in ["trainer=trl", f"trl.steps_per_generation={spg}", *args.overrides, f"seed={args.seed}"]))
    metrics = args.out / "metrics.jsonl"
    resume = get_last_checkpoint(str(args.out / "trl")) if (args.out / "trl").is_dir() else None
    done = int(resume.rsplit("-", 1)[1]) if resume else 0
    rows = [json.loads(line) for line in metrics.read_text().splitlines()] if resume and metrics.exists() else []
    rows = [r for r in rows if r["round"] <= done]  # what a step after the checkpoint logged is redone
    if resume and (not rows or rows[-1]["round"] != done):
        raise SystemExit(f"{metrics} has no row for {resume}'s step {done}: remove {args.out} to start again")
    metrics.write_text("".join(json.dumps(r) + "\n" for r in rows))
    clock = {"offset": rows[-1]["time/elapsed"] if rows else 0.0, "start": 0.0, "generate": 0.0, "eval": 0.0,
             "last": 0.0, "generate_seen": 0.0}
    pending: dict = {}  # this step's evaluation, written with its log row

    class Timed(GRPOTrainer):
        def _generate_and_score_completions(self, inputs):
            t0 = time.perf_counter()
            try:
                return super()._generate_and_score_completions(inputs)
            finally:
                clock["generate"] += time.perf_counter() - t0

    trainer = Timed(model=model_dir, reward_funcs=reward, args=config, train_dataset=data)
    tokenizer = trainer.processing_class
    sampler = open_sampler(cfg, trainer.model, tokenizer, model_dir, plan)
    held_out = eval_problems(task, cfg.eval)
    eval_prompts = [task.prompt_ids(p, tokenizer, cfg.model.chat_template) for p in held_out]

    class Log(TrainerCallback):
        def on_train_begin(self, *_, **__):  # rapid's clock also starts after the model and engine are loaded
            clock["start"] = clock["last"] = time.perf_counter()

        def on_step_end(self, _args, state, _control, **_):
            if state.global_step % every and state.global_step != steps:
                return
            t0 = time.perf_counter()
            sampler.sync_weights(trainer.model.state_dict().items())
            pending.update(evaluate(task, held_out, eval_prompts, sampler,
                                    eval_params(cfg.eval, s.max_tokens, cfg.seed), cfg.eval.k))
            pending["time/eval"] = time.perf_counter() - t0
            clock["eval"] += pending["time/eval"]

        def on_log(self, _args, state, _control, logs=None, **_):
            if not logs or "loss" not in logs:  # one log per optimizer step; the run's summary has no "loss"
                return
            now = time.perf_counter()
            generate = clock["generate"] - clock["generate_seen"]
            # the reward is logged on the steps that generated (every --steps-per-generation-th)
            row = {"round": state.global_step, **({"reward/mean": logs["reward"]} if "reward" in logs else {}),
                   "perf/samples": state.global_step * per_step, "time/generate": generate,
                   "time/update": now - clock["last"] - generate - pending.get("time/eval", 0.0),
                   **pending, "time/elapsed": clock["offset"] + now - clock["start"]}
            clock["last"], clock["generate_seen"] = now, clock["generate"]
            pending.clear()
            with metrics.open("a") as f:
                f.write(json.dumps(row) + "\n")

    trainer.add_callback(Log())
    trainer.train(resume_from_checkpoint=resume)
    last = json.loads(metrics.read_text().splitlines()[-1])
    print(f"TRL GRPOTrainer (steps_per_generation={spg}): {steps} steps in {last['time/elapsed']:.1f} s, final eval "
          + ", ".join(f"{k}={v:.3f}" for k, v in last.items() if k.startswith("eval/pass@")))


if __name__ == "__main__":
    main()
