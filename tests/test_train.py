"""The real CLI trains the tiny model end to end; the first mini-batch's pi_old is the current policy.
(Micro-batch invariance of the raw gradient, for every loss: tests/test_numerics.py.)"""

import json
import subprocess

import pytest
import torch

from conftest import RAPID, REPO, TINY, compose
from rapid_cli.learner import Learner
from rapid_cli.samplers.hf import HFSampler
from rapid_cli.tasks import make_task
from rapid_cli.trainer import PromptStream, train
from rapid_cli.types import Rollouts, SamplingParams


@pytest.mark.slow
def test_cli_trains_tiny_arith_for_two_rounds(tmp_path):
    # every row computed, so the loss's statistics (over the rows trained on) exist in every round even when
    # the random model earns no reward at all
    overrides = [o for o in TINY if not o.startswith("logger.wandb")] + ["logger.wandb.mode=offline",
                                                                         f"hydra.run.dir={tmp_path}",
                                                                         "algo.skip_zero_advantage=false"]
    proc = subprocess.run([RAPID, "train", *overrides], capture_output=True, text=True, timeout=600, cwd=REPO,
                          env={**__import__("os").environ, "WANDB_MODE": "offline"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    rounds = [r for r in records if r["round"] > 0]
    assert [r["round"] for r in rounds] == [1, 2]
    for key in ("reward/mean", "iw/mean", "iw/ess", "iw/clip_frac", "train/ppo_clip_frac", "time/generate",
                "time/update", "time/sync", "time/elapsed", "perf/gen_tokens_per_s", "iw/sampler_logprob_gap_mean"):
        assert key in rounds[0], key
    assert rounds[0]["iw/first_step_mean"] == pytest.approx(1.0, abs=1e-4)  # pi_theta == pi_old on step 1
    # algo.old_logprobs=auto: every round audits the fp32 HF sampler against the trainer; round 1 cannot
    # earn trust (no weight sync yet), round 2 does
    assert all(r["iw/sampler_seq_logw_gap_max"] <= 1e-3 for r in rounds)
    assert proc.stdout.count("using them from the next round on") == 1
    assert rounds[1]["perf/samples"] == 2 * 2 * 2 * 2  # rounds x A x M x G
    assert all(0.2 < r["perf/host_rss_peak_gb_max"] < 20 for r in rounds)  # torch + transformers alone hold > 0.2 GiB
    assert all("perf/gpu_mem_peak_gb_max" not in r for r in rounds)  # a CPU run: no GPU figure, not a made-up 0
    assert "eval/pass@1" in records[0] and "eval/pass@1" in rounds[-1]
    # every evaluation's completions, readable beside the number they make
    import gzip

    for rnd, record in ((0, records[0]), (2, rounds[-1])):
        samples = [json.loads(line) for line in gzip.open(tmp_path / "evals" / f"round-{rnd:06d}.jsonl.gz", "rt")]
        assert len(samples) == record["eval/problems"] and {"id", "completion", "reward"} <= set(samples[0])
        assert sum(s["reward"] >= 1 for s in samples) / len(samples) == pytest.approx(record["eval/pass@1"])
    assert not list((tmp_path / "evals").glob(".*"))  # no half-written file left
    assert (tmp_path / "curves.png").stat().st_size > 1000
    assert list((tmp_path / "wandb").glob("offline-run-*")), "W&B offline run missing"
    assert "wandb sync" in proc.stdout
    # rapid.log holds what the console printed, as plain text, so another terminal can follow the run
    log = (tmp_path / "rapid.log").read_text()
    for line in ("rapid ", "round 1: ", "round 2: ", "wandb sync"):
        assert line in log, (line, log)
    assert "\x1b[" not in log


def test_a_run_that_stops_with_an_error_says_why_in_its_log(tmp_path):
    proc = subprocess.run([RAPID, "train", *TINY, f"hydra.run.dir={tmp_path}", "algo.prompts_per_step=4",
                           "task.max_train=3"], capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode != 0
    log = (tmp_path / "rapid.log").read_text()
    assert "error: a round needs algo.steps_per_generation x algo.prompts_per_step = 8 prompts" in log


def _round(cfg, model, tok):
    task = make_task(cfg.task, seed=0)
    a = cfg.algo
    problems = PromptStream(task.train, 0).next(a.steps_per_generation * a.prompts_per_step)
    prompts = [task.prompt_ids(p, tok) for p in problems]
    gens = HFSampler(model, tok).generate(prompts, SamplingParams(n=a.group_size, max_tokens=6, seed=1))
    # rewards are all 0 for a random model: use a fixed pattern so advantages are non-zero
    rewards = [float(i % 3 == 0) for i in range(len(gens))]
    return Rollouts(problems, prompts, gens, rewards, a.group_size)


def test_first_mini_batch_needs_no_recompute(tiny_policy):
    """pi_old of the round's first mini-batch is the current policy: the step it takes with `None` rows
    (its own detached log-probs) is the step it takes with recomputed ones."""
    model, tok = tiny_policy
    state = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = compose(TINY + ["algo.prompts_per_step=2", "algo.group_size=2", "algo.steps_per_generation=2",
                          "optimizer.max_grad_norm=null"])  # raw gradients: clipping would hide a scale error
    ro = _round(cfg, model, tok)

    def learner():
        return Learner(model, cfg.algo, cfg.optimizer, pad_id=tok.pad_token_id, temperature=1.0,
                       total_steps=1)

    full = learner().logprobs(ro)
    rest = learner().logprobs(ro, slice(4, None))
    assert len(rest) == len(full) - 4
    assert torch.allclose(full[4:], rest, rtol=0, atol=1e-5)
    grads = []
    first_on_policy = torch.cat([torch.zeros_like(full[:4]), rest]), torch.arange(len(full)) >= 4  # old, rows
    for old, rows in ((full, None), first_on_policy):
        model.load_state_dict(state)
        ro.old_logprobs, ro.old_rows = old, rows
        learner().step(ro, ro.group_slice(0, 2))
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    model.load_state_dict(state)
    assert grads[0].abs().sum() > 0
    assert torch.allclose(grads[0], grads[1], atol=1e-6, rtol=1e-4)


def test_recompute_mode_compares_every_round(tmp_path):
    cfg = compose(TINY + ["train.rounds=2", "algo.old_logprobs=recompute", "eval.at_start=false"])
    train(cfg, tmp_path, run_name="unit")
    rounds = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all("iw/sampler_logprob_gap_max" in r for r in rounds if r["round"] > 0)


def test_prompt_stream_covers_each_epoch_once():
    stream = PromptStream(list(range(10)), seed=3)
    first = stream.next(6) + stream.next(4)
    assert sorted(first) == list(range(10))
    assert stream.cursor == 10 and sorted(stream.next(10)) == list(range(10))


def test_train_function_runs_and_returns_summary(tmp_path):
    cfg = compose(TINY + ["train.rounds=1", "algo.old_logprobs=sampler", "eval.at_start=false"])
    out = train(cfg, tmp_path, run_name="unit")
    assert out["reward/first_round"] == out["reward/mean"]
    assert out["iw/sampler_seq_logw_gap_max"] < 1e-4  # audited even when nothing is recomputed
    assert (tmp_path / "metrics.jsonl").exists()


def test_a_signal_during_a_periodic_save_stops_with_that_checkpoint(tmp_path, monkeypatch):
    """SIGTERM arriving while round 1's checkpoint is written: that checkpoint is the stop's, and no further
    round runs (before, the save ended the signal's grace and round 2 ran unbounded)."""
    import os
    import signal

    from rapid_cli import checkpoint
    from rapid_cli.stopping import Interrupted

    real_save = checkpoint.save

    def save_and_get_signalled(*args, **kwargs):
        if not checkpoint.checkpoints(tmp_path / "checkpoints"):
            os.kill(os.getpid(), signal.SIGTERM)
        return real_save(*args, **kwargs)

    monkeypatch.setattr(checkpoint, "save", save_and_get_signalled)
    cfg = compose(TINY + ["train.rounds=3", "train.save_every=1", "eval.at_start=false"])
    with pytest.raises(Interrupted) as stopped:
        train(cfg, tmp_path)
    assert stopped.value.round == 1 and stopped.value.checkpoint.name == "round-000001"
    assert [p.name for p in checkpoint.checkpoints(tmp_path / "checkpoints")] == ["round-000001"]


def test_task_stop_strings_end_training_and_evaluation_samples(tmp_path):
    """task.stop (lm-eval's `until`) must end the completions the update trains on and those the evaluation
    scores alike: a stop string only the evaluation knew would score text the policy was never trained to end."""
    import gzip

    stops = ["\n", "e", "a", "o", "i", "t"]  # the random model's sampled completions nearly all hold a letter, its
    cfg = compose(TINY + ["train.rounds=1", "sampler.max_tokens=32"])  # greedy (evaluation's) ones are newlines
    cfg.task.stop = stops
    train(cfg, tmp_path, run_name="unit")
    rounds = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rounds[-1]["train/stop_frac"] >= 0.75 and rounds[-1]["train/completion_len"] < 16
    evaluated = [json.loads(line) for f in sorted((tmp_path / "evals").glob("*.jsonl.gz"))
                 for line in gzip.open(f, "rt")]
    assert evaluated and not any(s in row["completion"] for row in evaluated for s in stops)
    assert sum(row["finish_reason"] == "stop" for row in evaluated) >= 0.75 * len(evaluated)
