"""The RAPID training loop (arXiv 2510.03515; docs/algorithm.md).

Unlike GRPO, which generates for one optimizer step at a time, each round generates G completions
for A*M prompts at once (generation is cheapest in large batches), then takes A optimizer steps on
disjoint mini-batches of M whole prompt groups. The policy drifts from the one that sampled (pi_old)
during the round; each step corrects for it with detached sequence importance weights w = pi_theta /
pi_old, clipped at c, inside the group baseline (algorithms/losses.py). One round reads in data-flow
order:

    generate -> reward -> old_logprobs -> update (A mini-batches) -> sync -> eval -> log

Run it with `rapid train` (see conf/config.yaml); tests call `train(cfg, run_dir)` directly.
"""

from __future__ import annotations

import contextlib
import random
import signal
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import OmegaConf

from rapid_cli import algorithms, checkpoint, distributed
from rapid_cli.behaviour import BehaviourLogprobs
from rapid_cli.config import Config
from rapid_cli.console import console, warn
from rapid_cli.errors import RapidError
from rapid_cli.evaluate import Evaluation, eval_set
from rapid_cli.gpu import peak_memory
from rapid_cli.learner import Learner, StepStats, update_metrics
from rapid_cli.logger import NullLogger, RunLogger
from rapid_cli.lora import trainable_summary
from rapid_cli.models import checkpoint_model
from rapid_cli.plan import Plan, make_plan, open_sampler
from rapid_cli.policy import check_fits, load_policy
from rapid_cli.resume import TrainerState, finished_earlier, resume_point
from rapid_cli.rewards.functions import part_metrics
from rapid_cli.samplers import Sampler
from rapid_cli.stopping import Interrupted, StopOnSignal
from rapid_cli.tasks import make_task
from rapid_cli.tasks.base import Task
from rapid_cli.timing import Phase, PhaseTimer
from rapid_cli.types import Rollouts
from rapid_cli.validation import planned_rounds, validate, validate_data, validate_training


class PromptStream:
    """Training problems in a seeded shuffled order, reshuffled each epoch; `cursor` counts problems
    served."""

    def __init__(self, problems: list, seed: int):
        self.problems, self.seed, self.cursor = problems, seed, 0

    def next(self, n: int) -> list:
        out = []
        while len(out) < n:
            epoch, pos = divmod(self.cursor, len(self.problems))
            order = list(range(len(self.problems)))
            random.Random(self.seed * 7919 + epoch).shuffle(order)
            take = min(n - len(out), len(order) - pos)
            out += [self.problems[i] for i in order[pos : pos + take]]
            self.cursor += take
        return out


class SkipGuard:
    """Counts skipped (non-finite) optimizer steps in a row across rounds and stops the run after
    `limit`: the weights are still the last good ones, so is the checkpoint on disk (written only
    after a round)."""

    def __init__(self, limit: int):
        self.limit, self.streak = limit, 0

    def check(self, skipped: list[bool], rnd: int) -> None:
        """`skipped`: whether each of round `rnd`'s steps was skipped."""
        for step in skipped:
            self.streak = self.streak + 1 if step else 0
            if self.streak >= self.limit:
                raise RapidError(
                    f"round {rnd}: {self.streak} optimizer steps in a row had a non-finite loss or "
                    "gradient norm and were skipped (weights and checkpoints kept from before "
                    "them); lower optimizer.lr, keep model.dtype=float32, or raise "
                    "optimizer.max_skipped_steps")




@dataclass
class Run:
    """The parts of one training job, made once by `setup`; `run_round` and `save` use them. The
    config is kept for the checkpoint writer and the logger, which serialise it; everything else
    reads `plan`."""

    cfg: Config
    plan: Plan
    d: distributed.Dist
    run_dir: Path
    name: str
    task: Task
    # the plain policy (the learner wraps it), as the checkpoint writer saves it
    model: torch.nn.Module
    tokenizer: object
    chat_template: bool | None
    learner: Learner
    sampler: Sampler
    behaviour: BehaviourLogprobs
    stream: PromptStream
    skips: SkipGuard
    evaluation: Evaluation
    log: RunLogger | NullLogger
    timer: PhaseTimer
    stop: StopOnSignal
    # where the run started from; its counters (totals, first_eval) go on from there
    state: TrainerState
    resumed_from: Path | None = None

    def prompt_ids(self, problems: list) -> list[list[int]]:
        return [self.task.prompt_ids(p, self.tokenizer, self.chat_template) for p in problems]


def train(cfg: Config, run_dir: Path, run_name: str = "rapid") -> dict:
    """Runs the planned rounds; returns the last logged metrics plus the final eval. A signal stops
    it after the round with a checkpoint (`Interrupted`) or abandons the round (`Abandoned`)."""
    with StopOnSignal(cfg.train.stop_grace_s) as stop, contextlib.ExitStack() as cleanup:
        validate(cfg)
        validate_training(cfg)
        # left last, however the job ends
        group = distributed.process_group(cfg.train, cfg.algo.prompts_per_step, cfg.device)
        d = cleanup.enter_context(group)
        # other ranks' Hydra dirs are throwaway
        run_dir = Path(distributed.broadcast(d, str(run_dir)))
        console.quiet = console.quiet or not d.main
        earlier = finished_earlier(cfg.train.resume, planned_rounds(cfg), run_dir)
        # every round ran before and no checkpoint is left: nothing to redo, nothing to load
        if earlier:
            before = next((r for r in earlier if r.get("round") == 0), {})
            elapsed = PhaseTimer(earlier[-1].get("time/elapsed", 0.0))
            return {**earlier[-1], **run_summary(earlier, before, elapsed)}
        run = setup(cfg, run_dir, d, cleanup, stop, run_name)
        evaluate_before(run)
        metrics: dict = {}
        with stop.rounds():
            for rnd in range(run.state.round + 1, run.plan.rounds + 1):
                metrics = run_round(run, rnd)[1]
                save_or_stop(run, rnd)
        summary = run_summary(run.log.history, run.state.first_eval, run.timer)
        run.log.close(summary)
        if d.main:
            last = (checkpoint.checkpoints(run_dir / "checkpoints") or [None])[-1]
            run.log.where(last, run.task.cli_args())
        return {**metrics, **summary}


def setup(cfg: Config, run_dir: Path, d: distributed.Dist, cleanup: contextlib.ExitStack,
          stop: StopOnSignal, run_name: str = "rapid") -> Run:
    """Every part of the job, resumed where `train.resume` says; what must be released however the
    job ends (the sampler, the logger) is entered on `cleanup`. `cfg` validated; `d` this process's
    place in the group."""
    resumed_from, state = resume_point(cfg, run_dir, d.main)  # a fresh run: TrainerState()
    distributed.same_on_all_ranks(d, checkpoint.identity(resumed_from),
                                  "the checkpoint to resume from", "every node must see the run "
                                  "directory on one shared filesystem "
                                  "(README: Many GPUs and nodes)")
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    device = distributed.device_for(d, cfg.device)
    plan = make_plan(cfg, device, d.world)
    task = _load_task(cfg)
    model, tokenizer, model_path = _load_model(cfg, device, resumed_from, plan.lr)
    evaluation = _eval_set(cfg, task, model, tokenizer,
                           run_dir / "evals" if cfg.eval.save_samples else None)
    learner = _make_learner(cfg, plan, d, device, model, tokenizer, resumed_from)
    sampler = open_sampler(cfg, learner.engine_model, tokenizer, model_path, plan)
    cleanup.callback(sampler.close)  # however the job ends: a sweep's next job needs the memory
    torch.manual_seed(cfg.seed)  # an inference engine may have reseeded the global generators
    behaviour = BehaviourLogprobs(cfg.algo, d, plan.trust_settings(d.parallel), state.sampler_trust,
                                  state.engine_gap)
    resume_round = state.round if resumed_from else None
    log = (RunLogger(cfg, run_dir, plan.rounds, run_name, resume_round, wandb_id=state.wandb_id)
           if d.main else NullLogger())
    cleanup.callback(_close_log, log, run_dir, run_name, d.main)  # the curves so far, W&B closed
    timer = PhaseTimer(elapsed=state.elapsed, totals=state.phase_totals, on_start=log.phase)
    run = Run(cfg=cfg, plan=plan, d=d, run_dir=run_dir, name=run_name, task=task, model=model,
              tokenizer=tokenizer, chat_template=cfg.model.chat_template, learner=learner,
              sampler=sampler, behaviour=behaviour, stream=PromptStream(task.train, cfg.seed),
              skips=SkipGuard(cfg.optimizer.max_skipped_steps), evaluation=evaluation, log=log,
              timer=timer, stop=stop, state=state, resumed_from=resumed_from)
    if resumed_from:
        learner.load_state_dict({"optimizer": state.optimizer, "scheduler": state.scheduler})
        run.stream.cursor = state.cursor
        checkpoint.set_rng_state(state.rng)
        console.print(f"[bold]resuming[/] from {resumed_from} "
                      f"(round {state.round} of {plan.rounds})")
    compute = "bf16 compute" if plan.precision == "bf16" else "fp32"
    console.print(f"[bold]rapid[/] {run_name}: {plan.rounds} rounds x {plan.steps} steps x "
                  f"{plan.groups_per_step} prompts x {plan.group_size} completions, "
                  f"{len(task.train)} training problems, {compute} on {plan.device} -> {run_dir}")
    return run


def _load_task(cfg: Config) -> Task:
    task = make_task(cfg.task, seed=cfg.seed, cache_dir=cfg.cache_dir, reward_cfg=cfg.reward)
    shared = {p.id for p in task.train} & {p.id for p in task.test}
    if shared:  # humaneval has no training split; a user's data may overlap too
        warn(f"task={cfg.task.name}: it trains on {len(shared)} of its {len(task.test)} test "
             "problems, so eval/ metrics measure problems the model trained on")
    return task


def _load_model(cfg: Config, device: torch.device, resumed_from: Path | None, lr: float):
    """(model, tokenizer, the full weights' path): the configured model, or the checkpoint's.
    `lr`: the plan's learning rate (with LoRA, optimizer.lr x lora.lr_scale), for the line that
    says what trains."""
    model_cfg = cfg.model
    # its model/ after full fine-tuning; its adapter/, onto the base it names, after LoRA
    if resumed_from:
        model_cfg = OmegaConf.merge(cfg.model, {"path": str(checkpoint_model(resumed_from))})
    model, tokenizer, path = load_policy(model_cfg, device, cfg.cache_dir, cfg.lora)
    if cfg.lora.enabled:
        lo = cfg.lora
        console.print(f"LoRA r={lo.r}: training {trainable_summary(model)} at lr {lr:g} "
                      f"(optimizer.lr {cfg.optimizer.lr:g} x lora.lr_scale {lo.lr_scale:g})")
    return model, tokenizer, path


def _eval_set(cfg: Config, task: Task, model, tokenizer, samples_dir: Path | None) -> Evaluation:
    """The eval set, once the prompts over task.max_prompt_tokens are dropped and the longest left
    is checked to fit the model's context with the completions of training and of eval."""
    longest = task.longest_prompt(tokenizer, cfg.model.chat_template)
    validate_data(cfg, len(task.train))  # on the problems left
    check_fits(model, cfg.sampler.max_tokens, longest, "sampler.max_tokens")
    evaluation = eval_set(cfg, task, tokenizer, samples_dir)
    check_fits(model, evaluation.params.max_tokens, longest, "eval.max_tokens")
    return evaluation


def _make_learner(cfg: Config, plan: Plan, d: distributed.Dist, device: torch.device, model,
                  tokenizer, resumed_from: Path | None) -> Learner:
    # a KL term's anchor is the run's initial policy: a resumed run loads it afresh rather than copy
    # the checkpoint's
    reference = None
    if resumed_from and algorithms.get(cfg.algo.name).needs_reference(cfg.algo):
        reference = load_policy(cfg.model, device, cfg.cache_dir, quantize=cfg.lora.quantize)[0]
    return Learner(model, cfg.algo, cfg.optimizer, pad_id=tokenizer.pad_token_id,
                   temperature=plan.sampling.temperature, total_steps=plan.total_steps, d=d,
                   device=device, precision=plan.precision, reference=reference, lr=plan.lr)


def _close_log(log, run_dir: Path, run_name: str, main: bool) -> None:
    if main and log.history:
        from rapid_cli.plots import plot_run

        plot_run(log.history, run_dir / "curves.png", title=run_name)
    log.close()


def evaluate_before(run: Run) -> None:
    """The eval before round 1 (`eval.at_start`), on a fresh run, logged as round 0."""
    if run.plan.eval_at_start and not run.resumed_from and run.d.main:
        with run.timer(Phase.EVAL):
            run.state.first_eval = run.evaluation(run.task, run.sampler, 0)
        times = run.timer.pop_round()
        run.log.log({**run.state.first_eval, **times, "time/elapsed": run.timer.elapsed}, step=0)
    # not inside an NCCL collective, whose timeout a long evaluation would pass
    distributed.line_up(run.d)


def run_round(run: Run, rnd: int) -> tuple[Rollouts, dict]:
    """Round `rnd`, its timed phases in the order the data flows; returns its rollouts and logged
    metrics."""
    plan, learner, timer = run.plan, run.learner, run.timer
    with timer(Phase.GENERATE):
        drawn = run.stream.next(plan.prompts_per_round)  # the same on every rank
        mine = distributed.owned_rows(run.d, len(drawn), plan.groups_per_step)
        problems = [drawn[i] for i in mine]
        prompt_ids = run.prompt_ids(problems)
        gens = run.sampler.generate(prompt_ids, plan.round_sampling(rnd, mine))
        run.sampler.release_memory()
    with timer(Phase.REWARD):
        rows = [p for p in problems for _ in range(plan.group_size)]
        scores = run.task.score(gens.texts, rows, gens.completion_ids, gens.finish_reasons)
        # ranks sample and score at their own pace; the passes below are collective
        distributed.line_up(run.d)
    ro = Rollouts(problems, prompt_ids, gens, scores.total, plan.group_size)
    # the rows any pass below computes
    ro.moving = learner.moving_rows(ro, run.behaviour.own_rows(ro))
    with timer(Phase.OLD_LOGPROBS):
        ro.old_logprobs, ro.old_rows = run.behaviour(learner, ro)
        ro.engine_correction = run.behaviour.engine_correction(ro)
    if learner.reference is not None:
        with timer(Phase.REF_LOGPROBS):
            ro.ref_logprobs = learner.logprobs(ro, reference=True)
    with timer(Phase.UPDATE):
        M = plan.groups_per_rank
        steps = [learner.step(ro, ro.group_slice(i * M, M), audit=i == 0)
                 for i in range(plan.steps)]
    run.skips.check([step.skipped for step in steps], rnd)
    with timer(Phase.SYNC):
        run.sampler.sync_weights(learner.full_weights())
    # all ranks': every rank decides alike
    audit = steps[0].audit.metrics() if steps[0].audit else {}
    run.behaviour.after_round(audit)
    eval_metrics = {}
    if run.d.main and plan.evaluates_after(rnd):
        with timer(Phase.EVAL):
            eval_metrics = run.evaluation(run.task, run.sampler, rnd)
    distributed.line_up(run.d)
    metrics = _log_round(run, rnd, ro, steps, {**audit, **eval_metrics}, scores.parts)
    return ro, metrics


def _log_round(run: Run, rnd: int, ro: Rollouts, steps: list[StepStats], extra: dict,
               parts: dict) -> dict:
    """The round's metrics over every rank, logged with a few of its completions; returns them."""
    means, maxima = round_metrics(ro, steps, run.timer)
    means |= part_metrics(parts)  # reward/<name> of each reward function (task=custom)
    maxima |= peak_memory(run.learner.device)  # perf/*_peak_gb_max: the largest of the ranks'
    gens = ro.generations
    whole = distributed.reduce_metrics(run.d, mean=means, max=maxima,
                                       sum={"perf/n": len(gens), "perf/tokens": gens.num_tokens})
    totals = run.state.totals
    totals["perf/samples"] += round(whole.pop("perf/n"))
    totals["perf/gen_tokens"] += round(whole.pop("perf/tokens"))
    metrics = {**whole, **extra, **totals, "time/elapsed": run.timer.elapsed}
    run.log.log(metrics, step=rnd)
    run.log.round_done(metrics, rnd)
    G = ro.group_size
    shown = [(ro.problems[i // G].question, gens.texts[i], ro.rewards[i])
             for i in range(0, len(gens), G)]
    run.log.samples(shown, rnd, printed=run.plan.log_samples)
    return metrics


def save_or_stop(run: Run, rnd: int) -> None:
    """Saves a checkpoint when the plan or a stop signal asks for one; raises `Interrupted` after a
    signal."""
    stopping = distributed.any_rank(run.d, bool(run.stop.requested))
    saved = None
    if stopping or run.plan.saves_after(rnd):
        saved = save(run, rnd)
        # a signal that came during this save (its grace stopped at the save) stops here, saved
        stopping = rnd < run.plan.rounds and distributed.any_rank(run.d, bool(run.stop.requested))
    if stopping:
        raise Interrupted(rnd, saved, run.stop.requested or signal.SIGTERM)


def save(run: Run, rnd: int) -> Path:
    """Checkpoint `round-<rnd>`: the weights and everything `resume.TrainerState` needs to go on
    exactly."""
    d, learner = run.d, run.learner
    weights = learner.checkpoint_weights()  # collectives: all ranks
    learner_state = learner.state_dict()
    if not d.main:
        distributed.line_up(d)  # while rank 0 writes, however slow the filesystem
        return run.run_dir / "checkpoints"
    state = TrainerState(round=rnd, cursor=run.stream.cursor, **learner_state,
                         rng=checkpoint.rng_state(), totals=run.state.totals,
                         first_eval=run.state.first_eval, elapsed=run.timer.elapsed,
                         phase_totals=run.timer.totals, wandb_id=run.log.wandb_id,
                         sampler_trust=run.behaviour.state(), engine_gap=run.behaviour.gap)
    run.stop.saving()
    with console.status(f"saving checkpoint round {rnd}"):
        path = checkpoint.save(run.run_dir / "checkpoints", rnd, run.model, run.tokenizer,
                               state.to_dict(), run.cfg,
                               run.plan.keep_checkpoints, weights)
    distributed.line_up(d)
    return path


def round_metrics(ro: Rollouts, steps: list[StepStats], timer: PhaseTimer) -> tuple[dict, dict]:
    """This rank's view of the round: (metrics to average over ranks, metrics to max over ranks)."""
    G, r = ro.group_size, ro.rewards
    groups = [r[i : i + G] for i in range(0, len(r), G)]
    mean = sum(r) / len(r)
    gens = ro.generations
    updates, maxima = update_metrics(steps)
    times = timer.pop_round()
    out = {
        "reward/mean": mean,
        "reward/std": (sum((x - mean) ** 2 for x in r) / len(r)) ** 0.5,
        "reward/groups_all_equal_frac": sum(len(set(g)) == 1 for g in groups) / len(groups),
        "train/completion_len": gens.num_tokens / len(gens),
        "train/stop_frac": sum(f == "stop" for f in gens.finish_reasons) / len(gens),
        # algo.engine_correction acted this round
        "iw/engine_corrected": float(ro.engine_correction != "none"),
        **updates,
        **times,
    }
    if Phase.GENERATE.key in times:
        out["perf/gen_tokens_per_s"] = gens.num_tokens / max(1e-9, times[Phase.GENERATE.key])
    return out, maxima


def run_summary(history: list[dict], first_eval: dict, timer: PhaseTimer) -> dict:
    rounds = [h for h in history if h.get("round", 0) > 0]
    out = {"time/total_s": timer.elapsed}
    out.update({f"time/total_{k}_s": v for k, v in timer.totals.items()})
    if rounds:
        out["reward/first_round"] = rounds[0]["reward/mean"]
        out["reward/last_round"] = rounds[-1]["reward/mean"]
    evals = [h for h in history if "eval/pass@1" in h]
    if first_eval and "eval/pass@1" in first_eval:
        out["eval/pass@1_before"] = first_eval["eval/pass@1"]
    if evals:
        out["eval/pass@1_after"] = evals[-1]["eval/pass@1"]
    return out
