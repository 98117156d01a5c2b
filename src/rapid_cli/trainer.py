"""The RAPID training loop (arXiv 2510.03515; ../shared/RAPID.md).

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
import math
import random
import signal
from pathlib import Path

import torch
from omegaconf import OmegaConf

from rapid_cli import checkpoint, distributed
from rapid_cli.algorithms import LOSSES, loss_denominator, loss_options, needs_reference
from rapid_cli.algorithms.aggregate import effective_sample_size
from rapid_cli.config import (
    OldLogprobs,
    resolve_precision,
    validate,
    validate_data,
    validate_training,
)
from rapid_cli.console import console, warn
from rapid_cli.errors import RapidError
from rapid_cli.evaluate import eval_params, evaluate
from rapid_cli.gpu import peak_memory
from rapid_cli.logger import NullLogger, RunLogger
from rapid_cli.policy import check_fits, completion_logprobs, load_policy, pack
from rapid_cli.samplers import make_sampler, resolve_name
from rapid_cli.stopping import Interrupted, StopOnSignal
from rapid_cli.tasks import make_task
from rapid_cli.timing import PhaseTimer
from rapid_cli.types import Rollouts, SamplingParams


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


def build_optimizer(opt_cfg, model, total_steps: int):
    params = list(model.parameters())
    # The fused kernel is ~4x faster than the default per-tensor loop on CPU (0.07 s vs 0.26 s a step for
    # 108M parameters); FSDP2's sharded DTensor parameters keep the default.
    fused = not any(hasattr(p, "full_tensor") for p in params)
    optimizer = torch.optim.AdamW(
        params, lr=opt_cfg.lr, betas=tuple(opt_cfg.betas), weight_decay=opt_cfg.weight_decay, fused=fused or None
    )

    def factor(step: int) -> float:
        if step < opt_cfg.warmup_steps:
            return (step + 1) / opt_cfg.warmup_steps
        if opt_cfg.schedule == "cosine":
            progress = (step - opt_cfg.warmup_steps) / max(1, total_steps - opt_cfg.warmup_steps)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return 1.0

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def set_base_lr(optimizer, scheduler, lr: float) -> None:
    """A resumed run takes `optimizer.lr` as given now; the saved schedule state would otherwise bring back
    the old rate silently. The schedule's position (warm-up, cosine) is kept."""
    old = scheduler.base_lrs[0]
    if old == lr:
        return
    console.print(f"[yellow]optimizer.lr: {old:g} in the checkpoint, {lr:g} from here on[/]")
    scheduler.base_lrs = [lr for _ in scheduler.base_lrs]
    factor = scheduler.lr_lambdas[0](scheduler.last_epoch)
    for group in optimizer.param_groups:
        group["initial_lr"], group["lr"] = lr, lr * factor


def _pad_rows(rows: list[list[float]], width: int, device) -> torch.Tensor:
    out = torch.zeros((len(rows), width), dtype=torch.float32)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r, dtype=torch.float32)
    return out.to(device)


def _micro_batches(rows: slice, size: int):
    for start in range(rows.start, rows.stop, size):
        yield slice(start, min(start + size, rows.stop))


@torch.no_grad()
def recompute_logprobs(model, ro: Rollouts, pad_id: int, micro: int, temperature: float, device,
                       start: int = 0) -> list[list[float]]:
    """log pi_old per completion token of rows `start`.., from the trainer's model before the round's first update."""
    was_training = model.training
    model.eval()
    out: list[list[float]] = []
    comp = ro.generations.completion_ids
    for mb in _micro_batches(slice(start, len(comp)), micro):
        batch = pack(ro.row_prompts(mb), comp[mb], pad_id, device)
        lp = completion_logprobs(model, batch, temperature)  # [b, C]
        out += [row[: len(c)] for row, c in zip(lp.tolist(), comp[mb], strict=True)]
    model.train(was_training)
    return out


AUDIT_KEY = "iw/sampler_seq_logw_gap_max"


def logprob_audit(trainer: torch.Tensor, sampler: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """How far the sampler's behaviour log-probs are from the trainer's for the same tokens. All [B, T].
    What the importance weight feels is the gap summed over a sequence (its error in log w), so that is
    the one `auto` decides on; a per-token gap of 5e-4 of one sign is log w = -1 over 2048 tokens."""
    gap = torch.where(mask > 0, trainer.float() - sampler, torch.zeros_like(sampler))  # [B, T]
    return {"audit_seq_logw_gap_max": gap.sum(-1).abs().max().item(), "audit_logprob_gap_max": gap.abs().max().item(),
            "audit_logprob_gap_sum": gap.abs().sum().item(), "audit_tokens_sum": mask.sum().item()}


def audit_metrics(step: dict) -> dict[str, float]:
    """The `iw/` metrics of the audit taken in the round's first step (none when there was nothing to compare)."""
    if "audit_tokens_sum" not in step:
        return {}
    return {AUDIT_KEY: step["audit_seq_logw_gap_max"], "iw/sampler_logprob_gap_max": step["audit_logprob_gap_max"],
            "iw/sampler_logprob_gap_mean": step["audit_logprob_gap_sum"] / max(1.0, step["audit_tokens_sum"])}


class BehaviourLogprobs:
    """Where each round's log pi_old comes from (algo.old_logprobs), and whether the sampler's may stand in.

    `recompute` runs the trainer's model over the round before the first update (the authors' choice: an
    inference engine's numerics differ from the trainer's). The first mini-batch needs none of it: nothing
    has been updated yet, so its pi_old is the current policy (`None` rows; update_minibatch detaches its
    own log-probs). `sampler` takes the sampler's log-probs for every row. `auto` recomputes until the
    sampler has passed the audit, then takes the sampler's for the rows past the first mini-batch.

    The audit costs nothing: the round's first step runs the policy, still pi_old, over the first
    mini-batch, and update_minibatch compares those log-probs with the sampler's for the same rows, every
    round and in every mode (`iw/sampler_seq_logw_gap_max`, the worst |sum_t gap| of a sequence, over all
    ranks). `auto` trusts the sampler after a round whose audit is within `algo.sampler_logw_tol`, but only
    a round sampled after one of this run's weight syncs (a sync that drops or garbles weights shows only
    then); an audit that fails later revokes the trust. The trust is checkpointed with the settings it was
    earned under (`settings`: sampler, engine dtype, precision, parallel layout, temperature, top_p) and
    dropped on a resume that changed any of them."""

    def __init__(self, algo, d, settings: dict, saved: dict | None = None):
        self.mode, self.tol, self.settings = algo.old_logprobs, algo.sampler_logw_tol, settings
        self.first_rows = algo.prompts_per_step // d.world * algo.group_size
        self.on_policy = algo.steps_per_generation == 1  # A=1: the single step's detached log-probs are pi_old
        self.trusted = bool(saved and saved.get("trusted") and saved.get("settings") == settings)
        self.synced = False  # whether this run has synced updated weights into the sampler yet
        if saved and saved.get("trusted") and not self.trusted and self.mode == OldLogprobs.auto:
            console.print("[dim]algo.old_logprobs=auto: sampler/precision/parallel settings changed since the checkpoint; "
                          "recomputing pi_old until the sampler passes the audit again[/]")

    def __call__(self, policy, ro: Rollouts, pad_id: int, micro: int, temperature: float, device) -> list | None:
        if self.on_policy:
            return None
        sampled = ro.generations.logprobs  # None: the sampler reports none that are the trainer's quantity
        if self.mode == OldLogprobs.sampler:
            return sampled
        if self.trusted and sampled is not None:
            return [None] * self.first_rows + sampled[self.first_rows :]
        return [None] * self.first_rows + recompute_logprobs(policy, ro, pad_id, micro, temperature, device,
                                                             start=self.first_rows)

    def after_round(self, audit: dict) -> None:
        """Takes the round's audit (the same on every rank: maxed over ranks), once its weights were synced."""
        gap = audit.get(AUDIT_KEY)
        if self.mode == OldLogprobs.auto and not self.on_policy and gap is not None:
            if self.trusted and gap > self.tol:
                self.trusted = False
                console.print(f"[yellow]algo.old_logprobs=auto: the sampler's log-probs drifted from the trainer's (log w "
                              f"gap {gap:.1e} > {self.tol:g}); recomputing pi_old again from the next round on[/]")
            elif not self.trusted and self.synced and gap <= self.tol:
                self.trusted = True
                console.print(f"[dim]algo.old_logprobs=auto: the sampler's log-probs match the trainer's (log w gap "
                              f"{gap:.1e} <= {self.tol:g}); using them from the next round on, audited every round[/]")
        self.synced = True

    def state(self) -> dict:
        return {"trusted": self.trusted, "settings": self.settings}


def update_minibatch(model, optimizer, scheduler, ro: Rollouts, old: list[list[float]] | None, rows: slice, cfg, loss_fn,
                     opts, pad_id: int, device, ref: list[list[float]] | None = None, d: distributed.Dist | None = None,
                     audit: list[list[float]] | None = None) -> dict:
    """One optimizer step on whole prompt groups `rows`, accumulated over micro-batches of whole groups.
    `old=None` (or None rows) means pi_old is the current policy, so its log-probs are the detached ones.
    `audit`: the sampler's log-probs, compared with this step's own (the round's first step, where the
    policy is still the one that sampled: BehaviourLogprobs)."""
    a = cfg.algo
    d = d or distributed.Dist()
    B = rows.stop - rows.start
    # The loss's denominator (rows, kept tokens, rows x norm_len) belongs to the whole mini-batch: every
    # micro-batch's loss is its part of that one sum, so the gradient does not depend on how it is cut.
    # DDP averages gradients over ranks, so each rank divides by the mean of the ranks' denominators.
    comp = ro.generations.completion_ids[rows]
    rewards = torch.tensor(ro.rewards[rows], dtype=torch.float32)  # [B]
    local = loss_denominator(loss_fn, completion_mask(comp), rewards, a.group_size, opts)
    denominator = distributed.mean_metrics(d, {"denominator": local})["denominator"] or 1.0  # 0: nothing kept, loss 0
    optimizer.zero_grad(set_to_none=True)
    sums: dict[str, float] = {}
    for mb in _micro_batches(rows, a.micro_batch_size):
        batch = pack(ro.row_prompts(mb), ro.generations.completion_ids[mb], pad_id, device)
        C = batch.completion_ids.shape[1]
        logprobs = completion_logprobs(model, batch, cfg.sampler.temperature)  # [b, C]
        old_lp = logprobs.detach() if old is None or old[mb.start] is None else _pad_rows(old[mb], C, device)  # [b, C]
        extra = {} if ref is None else {"ref_logprobs": _pad_rows(ref[mb], C, device)}
        loss, metrics = loss_fn(logprobs, old_lp, batch.completion_mask, rewards[mb.start - rows.start : mb.stop - rows.start].to(device),
                                a.group_size, **opts, **extra, denominator=denominator)
        loss.backward()
        metrics["loss"] = loss.item()  # the parts add up to the mini-batch's loss
        if audit is not None:
            metrics |= logprob_audit(logprobs.detach(), _pad_rows(audit[mb], C, device), batch.completion_mask)
        share = (mb.stop - mb.start) / B  # other metrics: means over rows
        for k, v in metrics.items():
            if k.endswith("_max"):
                sums[k] = max(sums.get(k, v), v)
            else:
                sums[k] = sums.get(k, 0.0) + (v if k == "loss" or k.endswith("_sum") else v * share)
    if "iw_sum" in sums:  # over the whole mini-batch, every rank's rows included, not a mean of micro-batch ESSs
        total = distributed.mean_metrics(d, {"iw_sum": sums["iw_sum"], "iw_sq_sum": sums["iw_sq_sum"]})
        sums["ess"] = effective_sample_size(total["iw_sum"], total["iw_sq_sum"]) * d.world
    sums["lr"] = optimizer.param_groups[0]["lr"]  # the rate this step uses (the scheduler moves on after it)
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optimizer.max_grad_norm or float("inf"))
    grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm  # FSDP2: a DTensor
    sums["grad_norm"] = grad_norm.item()
    # One NaN in the gradient would reach every weight through AdamW: such a step is skipped on every rank.
    bad = not (math.isfinite(sums["loss"]) and math.isfinite(sums["grad_norm"]))
    sums["skipped"] = distributed.mean_metrics(d, {"skipped_max": float(bad)})["skipped_max"]
    if sums["skipped"]:
        optimizer.zero_grad(set_to_none=True)
    else:
        optimizer.step()
        scheduler.step()
    return sums


class SkipGuard:
    """Counts skipped (non-finite) optimizer steps in a row across rounds and stops the run after `limit`:
    the weights are still the last good ones, so is the checkpoint on disk (written only after a round)."""

    def __init__(self, limit: int):
        self.limit, self.streak = limit, 0

    def check(self, steps: list[dict], rnd: int) -> None:
        for step in steps:
            self.streak = self.streak + 1 if step["skipped"] else 0
            if self.streak >= self.limit:
                raise RapidError(f"round {rnd}: {self.streak} optimizer steps in a row had a non-finite loss or gradient "
                                 "norm and were skipped (weights and checkpoints kept from before them); lower optimizer.lr, "
                                 "keep model.dtype=float32, or raise optimizer.max_skipped_steps")


def completion_mask(completions: list[list[int]]) -> torch.Tensor:
    """1 on each completion's tokens, 0 past its end: [B, longest]."""
    lengths = torch.tensor([len(c) for c in completions])
    return (torch.arange(max(1, int(lengths.max()))) < lengths[:, None]).float()


def _mean_dicts(dicts: list[dict]) -> dict:
    keys = [k for k in dicts[0] if all(k in d for d in dicts)]  # the first step's audit is its own
    return {k: (max if k.endswith("_max") else lambda v: sum(v) / len(v))([d[k] for d in dicts]) for k in keys}


IW_KEYS = {"iw_mean": "iw/mean", "iw_max": "iw/max", "iw_clipped_mean": "iw/clipped_mean", "iw_clip_frac": "iw/clip_frac",
           "ess": "iw/ess", "staleness": "iw/staleness", "log_ratio_abs_mean": "iw/log_ratio_abs_mean"}


def resume_point(cfg, run_dir: Path) -> tuple[Path | None, dict]:
    """The checkpoint `train.resume` points at (None: a fresh run) and its trainer state."""
    if not cfg.train.resume:
        return None, {}
    path = checkpoint.find(cfg.train.resume, run_dir / "checkpoints")
    if path is None:
        console.print(f"[dim]train.resume={cfg.train.resume}: no checkpoint in {run_dir}, starting afresh[/]")
        return None, {}
    conflicts = checkpoint.config_conflicts(path, cfg)
    if conflicts:
        raise RapidError(f"cannot resume from {path}: the model/task config differs ({'; '.join(conflicts)}); "
                         "drop those overrides, or start a new run without train.resume")
    return path, checkpoint.load_state(path)


def train(cfg, run_dir: Path, run_name: str = "rapid") -> dict:
    """Runs cfg.train.rounds RAPID rounds; returns the last logged metrics plus the final eval.
    A signal stops it after the round with a checkpoint (`Interrupted`) or abandons the round (`Abandoned`)."""
    with StopOnSignal(cfg.train.stop_grace_s) as stop, contextlib.ExitStack() as cleanup:
        return _train(cfg, run_dir, run_name, stop, cleanup)


def _train(cfg, run_dir: Path, run_name: str, stop: StopOnSignal, cleanup: contextlib.ExitStack) -> dict:
    validate(cfg)
    validate_training(cfg)
    d = distributed.setup(cfg)
    run_dir = Path(distributed.broadcast(d, str(run_dir)))  # other ranks' Hydra dirs are throwaway
    console.quiet = console.quiet or not d.main
    resumed_from, state = resume_point(cfg, run_dir)
    distributed.same_on_all_ranks(d, checkpoint.identity(resumed_from), "the checkpoint to resume from",
                                  "every node must see the run directory on one shared filesystem (README: Many GPUs and nodes)")
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    a, s = cfg.algo, cfg.sampler
    device = distributed.device_for(d, cfg.device)
    M = a.prompts_per_step // d.world  # prompt groups per mini-batch on this rank

    task = make_task(cfg.task, seed=cfg.seed, cache_dir=cfg.cache_dir, reward_cfg=cfg.reward)
    validate_data(cfg, len(task.train))
    shared = {p.id for p in task.train} & {p.id for p in task.test}
    if shared:  # humaneval has no training split; a user's data may overlap too
        warn(f"task={cfg.task.name}: it trains on {len(shared)} of its {len(task.test)} test problems, so eval/ "
             "metrics measure problems the model trained on")
    model_cfg = OmegaConf.merge(cfg.model, {"path": str(resumed_from / "model")}) if resumed_from else cfg.model
    model, tokenizer, model_path = load_policy(model_cfg, device, cfg.cache_dir)
    longest = task.longest_prompt(tokenizer, cfg.model.chat_template)
    check_fits(model, s.max_tokens, longest, "sampler.max_tokens")
    check_fits(model, eval_params(cfg).max_tokens, longest, "eval.max_tokens")
    pad_id = tokenizer.pad_token_id
    # FSDP shards the trainer's weights, so the sampler gets its own full copy (refreshed at each sync).
    sampler = make_sampler(cfg, copy.deepcopy(model) if d.parallel == "fsdp" else model, tokenizer, model_path)
    cleanup.callback(sampler.close)  # on every way out, so the next job of a sweep finds the memory free
    torch.manual_seed(cfg.seed)  # an inference engine may have reseeded the global generators
    loss_fn = LOSSES[a.name]
    opts = loss_options(loss_fn, a)
    reference = copy.deepcopy(model).eval().requires_grad_(False) if needs_reference(loss_fn, a) else None
    precision, engine_dtype = resolve_precision(cfg, device.type == "cuda")
    policy = distributed.wrap(d, model, precision)  # what forward/backward go through
    bf16 = precision == "bf16" and d.parallel != "fsdp"  # FSDP2 casts in its own policy
    amp = lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)  # noqa: E731
    optimizer, scheduler = build_optimizer(cfg.optimizer, policy, total_steps=cfg.train.rounds * a.steps_per_generation)
    stream = PromptStream(task.train, cfg.seed)
    skips = SkipGuard(cfg.optimizer.max_skipped_steps)
    # what the sampler's log-probs were audited under: trust earned with other settings does not carry over
    trust_settings = {"sampler": resolve_name(s.name), "engine_dtype": engine_dtype, "mixed_precision": precision,
                      "parallel": d.parallel, "world": d.world, "device": device.type, "temperature": s.temperature,
                      "top_p": s.top_p}
    behaviour = BehaviourLogprobs(a, d, trust_settings, state.get("sampler_trust"))
    to_ids = lambda p: task.prompt_ids(p, tokenizer, cfg.model.chat_template)  # noqa: E731
    eval_problems = task.test[: cfg.eval.limit] if cfg.eval.limit else task.test
    eval_prompts = [to_ids(p) for p in eval_problems]
    run_eval = lambda: evaluate(task, eval_problems, eval_prompts, sampler, eval_params(cfg), cfg.eval.k)  # noqa: E731

    log = RunLogger(cfg, run_dir, cfg.train.rounds, run_name, resume_round=state.get("round"),
                    wandb_id=state.get("wandb_id")) if d.main else NullLogger()

    @cleanup.callback
    def _close_files():  # on every way out: the curves so far, the progress bar and W&B closed
        if d.main and log.history:
            from rapid_cli.plots import plot_run

            plot_run(log.history, run_dir / "curves.png", title=run_name)
        log.close()

    timer = PhaseTimer(elapsed=state.get("elapsed", 0.0), totals=state.get("phase_totals"), on_start=log.phase)
    totals = state.get("totals", {"perf/samples": 0, "perf/gen_tokens": 0})
    first_eval = state.get("first_eval", {})
    if resumed_from:
        distributed.load_optimizer_state(policy, optimizer, state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_base_lr(optimizer, scheduler, cfg.optimizer.lr)
        stream.cursor = state["cursor"]
        checkpoint.set_rng_state(state["rng"])
        console.print(f"[bold]resuming[/] from {resumed_from} (round {state['round']} of {cfg.train.rounds})")
    console.print(f"[bold]rapid[/] {run_name}: {cfg.train.rounds} rounds x {a.steps_per_generation} steps x "
                  f"{a.prompts_per_step} prompts x {a.group_size} completions, {len(task.train)} training problems -> {run_dir}")
    if cfg.eval.at_start and not resumed_from and d.main:
        with timer("eval"):
            first_eval = run_eval()
        log.log({**first_eval, **timer.pop_round(), "time/elapsed": timer.elapsed}, step=0)
    distributed.wait_for_main(d)  # not inside an NCCL collective, whose timeout a long evaluation would pass

    def save(rnd: int) -> Path:
        weights = distributed.full_state_dict(policy) if d.parallel == "fsdp" else None  # collectives: all ranks
        optimizer_state = distributed.optimizer_state(policy, optimizer)
        if not d.main:
            distributed.wait_for_main(d)  # while rank 0 writes, however slow the filesystem
            return run_dir / "checkpoints"
        trainer_state = {"optimizer": optimizer_state, "scheduler": scheduler.state_dict(), "cursor": stream.cursor,
                         "totals": totals, "first_eval": first_eval, "elapsed": timer.elapsed, "phase_totals": timer.totals,
                         "wandb_id": log.wandb_id, "sampler_trust": behaviour.state()}
        stop.saving()
        with console.status(f"saving checkpoint round {rnd}"):
            path = checkpoint.save(run_dir / "checkpoints", rnd, model, tokenizer, trainer_state, cfg, cfg.train.keep_checkpoints,
                                   weights)
        distributed.wait_for_main(d)
        return path

    metrics: dict = {}
    model.train()
    with stop.rounds():
        for rnd in range(state.get("round", 0) + 1, cfg.train.rounds + 1):
            with timer("generate"):
                drawn = stream.next(a.steps_per_generation * a.prompts_per_step)  # the same on every rank
                mine = distributed.owned_rows(d, len(drawn), a.prompts_per_step)
                problems = [drawn[i] for i in mine]
                prompt_ids = [to_ids(p) for p in problems]
                round_seed = cfg.seed * 1_000_003 + rnd
                params = SamplingParams(n=a.group_size, temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_tokens,
                                        seed=round_seed, prompt_seeds=[round_seed * 4099 + i for i in mine])
                gens = sampler.generate(prompt_ids, params)
                sampler.release_memory()
            with timer("reward"):
                rewards = task.rewards(gens.texts, [p for p in problems for _ in range(a.group_size)])
            ro = Rollouts(problems, prompt_ids, gens, rewards, a.group_size)
            with timer("old_logprobs"), amp():
                old = behaviour(policy, ro, pad_id, a.micro_batch_size, s.temperature, device)
            ref = None
            if reference is not None:
                with timer("ref_logprobs"), amp():
                    ref = recompute_logprobs(reference, ro, pad_id, a.micro_batch_size, s.temperature, device)
            with timer("update"), amp():
                steps = [
                    update_minibatch(policy, optimizer, scheduler, ro, old, ro.group_slice(i * M, M), cfg, loss_fn, opts,
                                     pad_id, device, ref, d, audit=gens.logprobs if i == 0 else None)
                    for i in range(a.steps_per_generation)
                ]
            skips.check(steps, rnd)
            with timer("sync"):
                sampler.sync_weights(policy)
            audit = distributed.mean_metrics(d, audit_metrics(steps[0]))  # *_max over ranks: every rank decides alike
            behaviour.after_round(audit)
            eval_metrics = {}
            if d.main and ((cfg.eval.every and rnd % cfg.eval.every == 0) or rnd == cfg.train.rounds):
                with timer("eval"):
                    eval_metrics = run_eval()
            distributed.wait_for_main(d)

            local = distributed.mean_metrics(d, {**round_metrics(ro, steps, timer), **audit, "perf/n": len(gens),
                                                 "perf/tokens": gens.num_tokens, **peak_memory(device)})  # whole-batch view
            totals["perf/samples"] += round(local.pop("perf/n") * d.world)
            totals["perf/gen_tokens"] += round(local.pop("perf/tokens") * d.world)
            metrics = {**local, **eval_metrics, **totals, "time/elapsed": timer.elapsed}
            log.log(metrics, step=rnd)
            log.round_done(metrics, rnd)
            G = a.group_size
            log.samples([(problems[i // G].question, gens.texts[i], rewards[i]) for i in range(0, len(gens), G)], rnd,
                        printed=cfg.train.log_samples)
            stopping = distributed.any_rank(d, bool(stop.requested))
            if stopping or rnd == cfg.train.rounds or (cfg.train.save_every and rnd % cfg.train.save_every == 0):
                saved = save(rnd)
            if stopping:
                raise Interrupted(rnd, saved, stop.requested or signal.SIGTERM)

    summary = summarize(log.history, first_eval, timer)
    log.close(summary)
    if d.main:
        last = (checkpoint.checkpoints(run_dir / "checkpoints") or [None])[-1]
        log.where(last, f"task={cfg.task.name}" + (f" task.data_path={cfg.task.data_path}" if cfg.task.data_path else ""))
    distributed.shutdown(d)
    return {**metrics, **summary}


def round_metrics(ro: Rollouts, steps: list[dict], timer: PhaseTimer) -> dict:
    G, r = ro.group_size, ro.rewards
    groups = [r[i : i + G] for i in range(0, len(r), G)]
    mean = sum(r) / len(r)
    gens = ro.generations
    step = _mean_dicts(steps)
    times = timer.pop_round()
    out = {
        "reward/mean": mean,
        "reward/std": (sum((x - mean) ** 2 for x in r) / len(r)) ** 0.5,
        "reward/groups_all_equal_frac": sum(len(set(g)) == 1 for g in groups) / len(groups),
        "train/loss": step["loss"],
        "train/grad_norm": step["grad_norm"],
        "train/skipped_steps": sum(st["skipped"] for st in steps),
        "train/lr": steps[-1]["lr"],  # the rate of the round's last step
        "train/adv_abs_mean": step["adv_abs_mean"],
        "train/ppo_clip_frac": step["ppo_clip_frac"],
        "train/completion_len": gens.num_tokens / len(gens),
        "train/stop_frac": sum(f == "stop" for f in gens.finish_reasons) / len(gens),
        "iw/first_step_mean": steps[0]["iw_mean"],
        "iw/last_step_mean": steps[-1]["iw_mean"],
        **{IW_KEYS[k]: step[k] for k in IW_KEYS if k in step},
        **{f"train/{k}": step[k] for k in ("kl", "groups_dropped_frac") if k in step},
        **times,
    }
    if "time/generate" in times:
        out["perf/gen_tokens_per_s"] = gens.num_tokens / max(1e-9, times["time/generate"])
    return out


def summarize(history: list[dict], first_eval: dict, timer: PhaseTimer) -> dict:
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
