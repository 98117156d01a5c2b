"""Evaluation: n samples per test problem, scored by the task, reported as unbiased pass@k.

`eval_set` is the eval set both commands measure on; an `Evaluation` is what training calls every
`eval.every` rounds; `run_eval` is the `rapid eval` command: the same measurement on any model, with
a results table, `eval.json` and every completion in `samples.jsonl` in its run directory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from math import comb
from pathlib import Path
from typing import TYPE_CHECKING

from rapid_cli.config import EvalConfig
from rapid_cli.types import SamplingParams

if TYPE_CHECKING:
    from rapid_cli.config import Config
    from rapid_cli.tasks.base import Task
    from rapid_cli.types import Problem


Z95 = 1.96  # standard errors to each side of a mean for a 95% interval (normal approximation)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Chen et al. (2021) unbiased estimator: P(at least one of k draws out of n is correct), c correct.

    >>> pass_at_k(4, 1, 1), pass_at_k(4, 1, 2), pass_at_k(4, 0, 4), pass_at_k(2, 2, 1)
    (0.25, 0.5, 0.0, 1.0)
    """
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def eval_params(e: EvalConfig, sampler_max_tokens: int, seed: int, stop: list[str] | None = None) -> SamplingParams:
    """How `e` samples; `stop`: the task's stop strings (task.stop), ending evaluation as they end training."""
    temperature = e.temperature if e.temperature is not None else (0.0 if e.n == 1 else 1.0)
    return SamplingParams(n=e.n, temperature=temperature, top_p=e.top_p, max_tokens=e.max_tokens or sampler_max_tokens,
                          seed=seed, stop=tuple(stop or ()))


def eval_problems(task: Task, e: EvalConfig) -> list[Problem]:
    """The problems evaluated: the first `eval.limit` of the `eval.split` split (test unless asked otherwise)."""
    problems = task.train if e.split == "train" else task.test
    return problems[: e.limit] if e.limit else problems


@dataclass
class EvalResult:
    texts: list[str]  # problem-major: problem i's samples are rows i*n .. i*n+n-1
    rewards: list[float]
    correct: list[int]  # per problem: samples whose reward reaches task.pass_threshold (1 by default)
    completion_tokens: int
    finish_reasons: list[str] = field(default_factory=list)  # per completion, as texts: "stop" | "length"


def sample_and_score(task, problems, prompt_ids, sampler, params: SamplingParams, progress=None) -> EvalResult:
    """With `progress(done, total)`, generates and scores in about 20 chunks (of at least 32 problems, so an
    engine still sees large batches) to show a long evaluation move; each chunk gets its own seed (one seed
    for all would replay the same random draws). Without it, one batch."""
    from dataclasses import replace

    n = params.n
    chunk = max(32, -(-len(problems) // 20)) if progress is not None else max(1, len(problems))
    texts, rewards, tokens, reasons = [], [], 0, []
    for start in range(0, len(problems), chunk):
        gens = sampler.generate(prompt_ids[start : start + chunk], replace(params, seed=params.seed + start))
        rows = [p for p in problems[start : start + chunk] for _ in range(n)]
        with task.evaluating():
            rewards += task.score(gens.texts, rows, gens.completion_ids, gens.finish_reasons).total
        texts += gens.texts
        reasons += gens.finish_reasons
        tokens += gens.num_tokens
        if progress is not None:
            progress(min(start + chunk, len(problems)), len(problems))
    correct = [sum(r >= task.pass_threshold for r in rewards[i * n : (i + 1) * n]) for i in range(len(problems))]
    return EvalResult(texts, rewards, correct, tokens, reasons)


def standard_error(values: list[float]) -> float:
    """Of the mean of `values`: the sample standard deviation over sqrt(len); 0 for fewer than two."""
    import statistics

    return statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else 0.0


def pass_at_k_metrics(result: EvalResult, n: int, ks) -> dict[str, float]:
    """pass@k and, as `eval/pass@k_se`, its standard error over the problems: a problem's n samples are not
    independent draws, so the noise is that of a mean of per-problem estimates, not a binomial over all samples."""
    problems = max(1, len(result.correct))
    metrics = {"eval/reward_mean": sum(result.rewards) / max(1, len(result.rewards)),
               "eval/problems": len(result.correct)}
    for k in ks:
        per_problem = [pass_at_k(n, c, k) for c in result.correct]
        metrics[f"eval/pass@{k}"] = sum(per_problem) / problems
        metrics[f"eval/pass@{k}_se"] = standard_error(per_problem)
    metrics["eval/completion_tokens_mean"] = result.completion_tokens / max(1, len(result.texts))
    return metrics


def write_samples(path: Path, problems, result: EvalResult, n: int) -> None:
    """Every completion of an evaluation, a JSON line each (problem id, sample index, reward, finish reason, text);
    gzip-compressed for a `.gz` path. Written beside and then moved over `path`, so a crash leaves no half file."""
    import gzip

    tmp = path.with_name(f".{path.name}.tmp")
    with (gzip.open(tmp, "wt", encoding="utf-8") if path.suffix == ".gz" else tmp.open("w", encoding="utf-8")) as f:
        for i, p in enumerate(problems):
            for j in range(n):
                f.write(json.dumps({"id": p.id, "sample": j, "reward": result.rewards[i * n + j],
                                    "finish_reason": result.finish_reasons[i * n + j],
                                    "completion": result.texts[i * n + j]}) + "\n")
    tmp.replace(path)


def evaluate(task, problems, prompt_ids, sampler, params: SamplingParams, ks) -> dict[str, float]:
    """Generate params.n completions for each problem; returns `eval/` metrics."""
    return pass_at_k_metrics(sample_and_score(task, problems, prompt_ids, sampler, params), params.n, ks)


@dataclass
class Evaluation:
    """The eval set, tokenized once, and how it is sampled (pass@k on the test split); with `samples_dir`, each
    evaluation's completions go to samples_dir/round-NNNNNN.jsonl.gz."""

    problems: list
    prompts: list[list[int]]
    params: SamplingParams
    ks: list[int]
    samples_dir: Path | None = None

    def __call__(self, task, sampler, rnd: int) -> dict[str, float]:
        result = sample_and_score(task, self.problems, self.prompts, sampler, self.params)
        if self.samples_dir is not None:
            self.samples_dir.mkdir(parents=True, exist_ok=True)
            write_samples(self.samples_dir / f"round-{rnd:06d}.jsonl.gz", self.problems, result, self.params.n)
        return pass_at_k_metrics(result, self.params.n, self.ks)


def eval_set(cfg: Config, task: Task, tokenizer, samples_dir: Path | None = None) -> Evaluation:
    """The eval problems (eval.split, eval.limit) tokenized once, and how they are sampled: the same for
    `rapid train`'s evaluations and `rapid eval`."""
    problems = eval_problems(task, cfg.eval)
    prompts = [task.prompt_ids(p, tokenizer, cfg.model.chat_template) for p in problems]
    params = eval_params(cfg.eval, cfg.sampler.max_tokens, cfg.seed, cfg.task.stop)
    return Evaluation(problems, prompts, params, list(cfg.eval.k), samples_dir)


def run_eval(cfg: Config, run_dir: Path) -> dict:
    """`rapid eval`: pass@k of `model` on `task`'s test split (or `eval.split=train`); prints a table, writes
    eval.json and samples.jsonl."""
    import time

    import torch
    from rich.table import Table

    from rapid_cli.console import console, progress_bar
    from rapid_cli.plan import make_plan, open_sampler
    from rapid_cli.policy import check_fits, load_policy, pick_device
    from rapid_cli.tasks import make_task
    from rapid_cli.tasks.base import PromptLength
    from rapid_cli.validation import validate

    validate(cfg)
    torch.manual_seed(cfg.seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    task = make_task(cfg.task, seed=cfg.seed, cache_dir=cfg.cache_dir, reward_cfg=cfg.reward)
    task.splits()  # a data file's errors before the model's (slower) load
    device = pick_device(cfg.device)
    plan = make_plan(cfg, device)
    model, tokenizer, model_path = load_policy(cfg.model, device, cfg.cache_dir)
    task.drop_long_prompts(tokenizer, cfg.model.chat_template, train_too=False)  # task.max_prompt_tokens, if set
    evaluation = eval_set(cfg, task, tokenizer)
    problems, prompts, params = evaluation.problems, evaluation.prompts, evaluation.params
    ks = sorted({*evaluation.ks, params.n})
    sampler = open_sampler(cfg, model, tokenizer, model_path, plan)
    longest = max(range(len(prompts)), key=lambda i: len(prompts[i]))
    check_fits(model, params.max_tokens, PromptLength(len(prompts[longest]), problems[longest].id),
               "eval.max_tokens" if cfg.eval.max_tokens else "sampler.max_tokens")
    console.print(f"[bold]rapid eval[/] {cfg.model.path} on {cfg.task.name}: {len(problems)} problems x {params.n} "
                  f"samples at T={params.temperature} ({plan.sampler} sampler) -> {run_dir}")
    start = time.perf_counter()
    try:
        with progress_bar("evaluating", len(problems), "problems") as advance:
            result = sample_and_score(task, problems, prompts, sampler, params, progress=advance)
    finally:
        sampler.close()
    seconds = time.perf_counter() - start
    metrics = pass_at_k_metrics(result, params.n, ks)

    table = Table(title=f"{cfg.task.name} {cfg.eval.split}: {cfg.model.path}",
                  caption=f"pass@k ± half the 95% interval over the {len(problems)} problems (1.96 standard errors)")
    for col in ("problems", "samples", "temperature", *[f"pass@{k}" for k in ks], "mean tokens", "seconds"):
        table.add_column(col, justify="right", no_wrap=col.startswith("pass@"))  # "0.021 ± 0.010" on one line
    table.add_row(str(len(problems)), str(params.n), f"{params.temperature:g}",
                  *[f"{metrics[f'eval/pass@{k}']:.3f} ± {Z95 * metrics[f'eval/pass@{k}_se']:.3f}" for k in ks],
                  f"{metrics['eval/completion_tokens_mean']:.0f}", f"{seconds:.1f}")
    console.print(table)

    n = params.n
    write_samples(run_dir / "samples.jsonl", problems, result, n)
    report = {
        "model": cfg.model.path, "task": cfg.task.name, "split": str(cfg.eval.split), "problems": len(problems), "n": n,
        "temperature": params.temperature, "top_p": params.top_p, "max_tokens": params.max_tokens, "seed": cfg.seed,
        "seconds": seconds, "metrics": metrics,
        "per_problem": [{"id": p.id, "correct": c} for p, c in zip(problems, result.correct, strict=True)],
    }
    (run_dir / "eval.json").write_text(json.dumps(report, indent=2))
    console.print(f"wrote {run_dir / 'eval.json'} and samples.jsonl")
    return report
