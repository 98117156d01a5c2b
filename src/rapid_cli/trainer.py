"""The RAPID training loop (arXiv 2510.03515; docs/algorithm.md).

Unlike GRPO, which generates for one optimizer step at a time, each round generates G completions for
A*M prompts at once (generation is cheapest in large batches), then takes A optimizer steps on disjoint
mini-batches of M whole prompt groups. The policy drifts from the one that sampled (pi_old) during the
round; each step corrects for it with detached sequence importance weights w = pi_theta / pi_old,
clipped at c, inside the group baseline (algorithms/losses.py). One round reads in data-flow order:

    generate -> reward -> old_logprobs -> update (A mini-batches) -> sync -> eval -> log

Run it with `rapid train` (see conf/config.yaml); tests call `train(cfg, run_dir)` directly.
"""

from __future__ import annotations

import contextlib
import copy
import random
import signal
from pathlib import Path

import torch
from omegaconf import OmegaConf

from rapid_cli import algorithms, checkpoint, distributed
from rapid_cli.behaviour import BehaviourLogprobs
from rapid_cli.config import resolve_precision
from rapid_cli.console import console, warn
from rapid_cli.errors import RapidError
from rapid_cli.evaluate import eval_params, evaluate
from rapid_cli.gpu import peak_memory
from rapid_cli.hardware import fast_bf16
from rapid_cli.learner import Learner, StepStats, update_metrics
from rapid_cli.logger import NullLogger, RunLogger
from rapid_cli.lora import ADAPTER_DIR, trainable_summary
from rapid_cli.policy import check_fits, load_policy
from rapid_cli.resume import TrainerState, finished_earlier, resume_point
from rapid_cli.rewards.functions import part_metrics
from rapid_cli.samplers import make_sampler, resolve_name
from rapid_cli.stopping import Interrupted, StopOnSignal
from rapid_cli.tasks import make_task
from rapid_cli.timing import Phase, PhaseTimer
from rapid_cli.types import Rollouts, SamplingParams
from rapid_cli.validation import planned_eval_every, planned_rounds, validate, validate_data, validate_training


class PromptStream:
    """Training problems in a seeded shuffled order, reshuffled each epoch; `cursor` counts problems served."""

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
    """Counts skipped (non-finite) optimizer steps in a row across rounds and stops the run after `limit`:
    the weights are still the last good ones, so is the checkpoint on disk (written only after a round)."""

    def __init__(self, limit: int):
        self.limit, self.streak = limit, 0

    def check(self, skipped: list[bool], rnd: int) -> None:
        """`skipped`: whether each of round `rnd`'s steps was skipped."""
        for step in skipped:
            self.streak = self.streak + 1 if step else 0
            if self.streak >= self.limit:
                raise RapidError(f"round {rnd}: {self.streak} optimizer steps in a row had a non-finite loss or "
                                 "gradient norm and were skipped (weights and checkpoints kept from before them); "
                                 "lower optimizer.lr, keep model.dtype=float32, or raise optimizer.max_skipped_steps")




def train(cfg, run_dir: Path, run_name: str = "rapid") -> dict:
    """Runs cfg.train.rounds RAPID rounds; returns the last logged metrics plus the final eval.
    A signal stops it after the round with a checkpoint (`Interrupted`) or abandons the round (`Abandoned`)."""
    with StopOnSignal(cfg.train.stop_grace_s) as stop, contextlib.ExitStack() as cleanup:
        return _train(cfg, run_dir, run_name, stop, cleanup)


def _train(cfg, run_dir: Path, run_name: str, stop: StopOnSignal, cleanup: contextlib.ExitStack) -> dict:
    validate(cfg)
    validate_training(cfg)
    cfg.train.rounds = planned_rounds(cfg)  # train.samples, where set, decides; everything below reads rounds
    cfg.eval.every = planned_eval_every(cfg)  # and eval.every_samples
    # left last, however the job ends
    d = cleanup.enter_context(distributed.process_group(cfg.train, cfg.algo.prompts_per_step, cfg.device))
    run_dir = Path(distributed.broadcast(d, str(run_dir)))  # other ranks' Hydra dirs are throwaway
    console.quiet = console.quiet or not d.main
    earlier = finished_earlier(cfg, run_dir)
    if earlier:  # every round ran before and no checkpoint is left: nothing to redo, nothing to load
        first_eval = next((r for r in earlier if r.get("round") == 0), {})
        return {**earlier[-1], **run_summary(earlier, first_eval, PhaseTimer(earlier[-1].get("time/elapsed", 0.0)))}
    resumed_from, state = resume_point(cfg, run_dir, d.main)  # a fresh run: TrainerState()
    distributed.same_on_all_ranks(d, checkpoint.identity(resumed_from), "the checkpoint to resume from",
                                  "every node must see the run directory on one shared filesystem "
                                  "(README: Many GPUs and nodes)")
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    a, s = cfg.algo, cfg.sampler
    device = distributed.device_for(d, cfg.device)
    precision, engine_dtype = resolve_precision(cfg, device.type == "cuda", fast_bf16(device.type == "cuda"))
    M = a.prompts_per_step // d.world  # prompt groups per mini-batch on this rank

    task = make_task(cfg.task, seed=cfg.seed, cache_dir=cfg.cache_dir, reward_cfg=cfg.reward)
    shared = {p.id for p in task.train} & {p.id for p in task.test}
    if shared:  # humaneval has no training split; a user's data may overlap too
        warn(f"task={cfg.task.name}: it trains on {len(shared)} of its {len(task.test)} test problems, so eval/ "
             "metrics measure problems the model trained on")
    if resumed_from and cfg.lora.enabled:  # the base as configured, the adapter as trained so far
        model, tokenizer, model_path = load_policy(cfg.model, device, cfg.cache_dir, adapter=resumed_from / ADAPTER_DIR)
    else:
        model_cfg = OmegaConf.merge(cfg.model, {"path": str(resumed_from / "model")}) if resumed_from else cfg.model
        model, tokenizer, model_path = load_policy(model_cfg, device, cfg.cache_dir, cfg.lora)
    if cfg.lora.enabled:
        console.print(f"LoRA r={cfg.lora.r}: training {trainable_summary(model)}")
    longest = task.longest_prompt(tokenizer, cfg.model.chat_template)  # drops prompts over task.max_prompt_tokens
    validate_data(cfg, len(task.train))  # on the problems left
    check_fits(model, s.max_tokens, longest, "sampler.max_tokens")
    eval_sampling = eval_params(cfg.eval, s.max_tokens, cfg.seed)
    check_fits(model, eval_sampling.max_tokens, longest, "eval.max_tokens")
    # FSDP shards the trainer's weights, so the sampler gets its own full copy (refreshed at each sync).
    sampler = make_sampler(cfg, copy.deepcopy(model) if d.parallel == "fsdp" else model, tokenizer, model_path)
    cleanup.callback(sampler.close)  # on every way out, so the next job of a sweep finds the memory free
    torch.manual_seed(cfg.seed)  # an inference engine may have reseeded the global generators
    # a KL term's anchor is the run's initial policy: a resumed run loads it afresh rather than copy the checkpoint's
    initial = (load_policy(cfg.model, device, cfg.cache_dir)[0]
               if resumed_from and algorithms.get(a.name).needs_reference(a) else None)
    learner = Learner(model, a, cfg.optimizer, pad_id=tokenizer.pad_token_id, temperature=s.temperature,
                      total_steps=cfg.train.rounds * a.steps_per_generation, d=d, device=device,
                      precision=precision, reference=initial)
    stream = PromptStream(task.train, cfg.seed)
    skips = SkipGuard(cfg.optimizer.max_skipped_steps)
    # what the sampler's log-probs were audited under: trust earned with other settings does not carry over
    trust_settings = {"sampler": resolve_name(s.name), "engine_dtype": engine_dtype, "mixed_precision": precision,
                      "parallel": d.parallel, "world": d.world, "device": device.type, "temperature": s.temperature,
                      "top_p": s.top_p}
    behaviour = BehaviourLogprobs(a, d, trust_settings, state.sampler_trust, state.engine_gap)
    to_ids = lambda p: task.prompt_ids(p, tokenizer, cfg.model.chat_template)  # noqa: E731
    eval_problems = task.test[: cfg.eval.limit] if cfg.eval.limit else task.test
    eval_prompts = [to_ids(p) for p in eval_problems]
    run_eval = lambda: evaluate(task, eval_problems, eval_prompts, sampler, eval_sampling, cfg.eval.k)  # noqa: E731

    log = RunLogger(cfg, run_dir, cfg.train.rounds, run_name, resume_round=state.round if resumed_from else None,
                    wandb_id=state.wandb_id) if d.main else NullLogger()

    @cleanup.callback
    def _close_files():  # on every way out: the curves so far, the progress bar and W&B closed
        if d.main and log.history:
            from rapid_cli.plots import plot_run

            plot_run(log.history, run_dir / "curves.png", title=run_name)
        log.close()

    timer = PhaseTimer(elapsed=state.elapsed, totals=state.phase_totals, on_start=log.phase)
    totals, first_eval = state.totals, state.first_eval
    if resumed_from:
        learner.load_state_dict({"optimizer": state.optimizer, "scheduler": state.scheduler})
        stream.cursor = state.cursor
        checkpoint.set_rng_state(state.rng)
        console.print(f"[bold]resuming[/] from {resumed_from} (round {state.round} of {cfg.train.rounds})")
    console.print(f"[bold]rapid[/] {run_name}: {cfg.train.rounds} rounds x {a.steps_per_generation} steps x "
                  f"{a.prompts_per_step} prompts x {a.group_size} completions, {len(task.train)} training problems, "
                  f"{'bf16 compute' if precision == 'bf16' else 'fp32'} on {device.type} -> {run_dir}")
    if cfg.eval.at_start and not resumed_from and d.main:
        with timer(Phase.EVAL):
            first_eval = run_eval()
        log.log({**first_eval, **timer.pop_round(), "time/elapsed": timer.elapsed}, step=0)
    distributed.wait_for_main(d)  # not inside an NCCL collective, whose timeout a long evaluation would pass

    def save(rnd: int) -> Path:
        weights = dict(learner.full_weights()) if d.parallel == "fsdp" else None  # collectives: all ranks
        learner_state = learner.state_dict()
        if not d.main:
            distributed.wait_for_main(d)  # while rank 0 writes, however slow the filesystem
            return run_dir / "checkpoints"
        trainer_state = TrainerState(round=rnd, cursor=stream.cursor, **learner_state, rng=checkpoint.rng_state(),
                                     totals=totals, first_eval=first_eval, elapsed=timer.elapsed,
                                     phase_totals=timer.totals, wandb_id=log.wandb_id, sampler_trust=behaviour.state(),
                                     engine_gap=behaviour.gap)
        stop.saving()
        with console.status(f"saving checkpoint round {rnd}"):
            path = checkpoint.save(run_dir / "checkpoints", rnd, model, tokenizer, trainer_state.to_dict(), cfg,
                                   cfg.train.keep_checkpoints, weights)
        distributed.wait_for_main(d)
        return path

    metrics: dict = {}
    with stop.rounds():
        for rnd in range(state.round + 1, cfg.train.rounds + 1):
            with timer(Phase.GENERATE):
                drawn = stream.next(a.steps_per_generation * a.prompts_per_step)  # the same on every rank
                mine = distributed.owned_rows(d, len(drawn), a.prompts_per_step)
                problems = [drawn[i] for i in mine]
                prompt_ids = [to_ids(p) for p in problems]
                round_seed = cfg.seed * 1_000_003 + rnd
                params = SamplingParams(n=a.group_size, temperature=s.temperature, top_p=s.top_p,
                                        max_tokens=s.max_tokens, seed=round_seed,
                                        prompt_seeds=[round_seed * 4099 + i for i in mine])
                gens = sampler.generate(prompt_ids, params)
                sampler.release_memory()
            with timer(Phase.REWARD):
                scores = task.score(gens.texts, [p for p in problems for _ in range(a.group_size)], gens.completion_ids,
                                    gens.finish_reasons)
                rewards = scores.total
            ro = Rollouts(problems, prompt_ids, gens, rewards, a.group_size)
            ro.moving = learner.moving_rows(ro, behaviour.own_rows(ro))  # the rows any pass below computes
            with timer(Phase.OLD_LOGPROBS):
                ro.old_logprobs, ro.old_rows = behaviour(learner, ro)
                ro.engine_correction = behaviour.engine_correction(ro)
            if learner.reference is not None:
                with timer(Phase.REF_LOGPROBS):
                    ro.ref_logprobs = learner.logprobs(ro, reference=True)
            with timer(Phase.UPDATE):
                steps = [learner.step(ro, ro.group_slice(i * M, M), audit=i == 0)
                         for i in range(a.steps_per_generation)]
            skips.check([step.skipped for step in steps], rnd)
            with timer(Phase.SYNC):
                sampler.sync_weights(learner.full_weights())
            audit = steps[0].audit.metrics() if steps[0].audit else {}  # all ranks': every rank decides alike
            behaviour.after_round(audit)
            eval_metrics = {}
            if d.main and ((cfg.eval.every and rnd % cfg.eval.every == 0) or rnd == cfg.train.rounds):
                with timer(Phase.EVAL):
                    eval_metrics = run_eval()
            distributed.wait_for_main(d)

            means, maxima = round_metrics(ro, steps, timer)
            means |= part_metrics(scores.parts)  # reward/<name> of each reward function (task=custom)
            maxima |= peak_memory(device)  # perf/*_peak_gb_max: the largest of the ranks'
            whole = distributed.reduce_metrics(d, mean=means, max=maxima,
                                               sum={"perf/n": len(gens), "perf/tokens": gens.num_tokens})
            totals["perf/samples"] += round(whole.pop("perf/n"))
            totals["perf/gen_tokens"] += round(whole.pop("perf/tokens"))
            metrics = {**whole, **audit, **eval_metrics, **totals, "time/elapsed": timer.elapsed}
            log.log(metrics, step=rnd)
            log.round_done(metrics, rnd)
            G = a.group_size
            log.samples([(problems[i // G].question, gens.texts[i], rewards[i]) for i in range(0, len(gens), G)], rnd,
                        printed=cfg.train.log_samples)
            stopping = distributed.any_rank(d, bool(stop.requested))
            if stopping or rnd == cfg.train.rounds or (cfg.train.save_every and rnd % cfg.train.save_every == 0):
                saved = save(rnd)
                # a signal that came during this save (its grace stopped at the save) stops here, saved
                stopping = rnd < cfg.train.rounds and distributed.any_rank(d, bool(stop.requested))
            if stopping:
                raise Interrupted(rnd, saved, stop.requested or signal.SIGTERM)

    summary = run_summary(log.history, first_eval, timer)
    log.close(summary)
    if d.main:
        last = (checkpoint.checkpoints(run_dir / "checkpoints") or [None])[-1]
        log.where(last, task.cli_args())
    return {**metrics, **summary}


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
        "iw/engine_corrected": float(ro.engine_correction != "none"),  # algo.engine_correction acted this round
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
