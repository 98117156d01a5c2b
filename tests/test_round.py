"""The loop's pieces driven one at a time: `setup` makes the parts, `run_round` runs one round and hands back its
rollouts and metrics, and the composed config is never written to (the plan holds what was derived from it)."""

import contextlib

import pytest
from omegaconf import OmegaConf

from conftest import TINY, compose
from rapid_cli import distributed
from rapid_cli.plan import make_plan
from rapid_cli.stopping import StopOnSignal
from rapid_cli.trainer import run_round, save, setup
from rapid_cli.validation import validate


def test_one_round_from_setup(tmp_path):
    # train.samples decides the rounds (3 rounds of A x M x G = 2 x 2 x 2 = 8 completions, train.rounds is 2);
    # eval every round
    cfg = compose(TINY + ["train.samples=24", "eval.every_samples=8", "algo.skip_zero_advantage=false",
                          "eval.at_start=false"])
    validate(cfg)
    before = OmegaConf.to_yaml(cfg)
    with StopOnSignal(None) as stop, contextlib.ExitStack() as cleanup:
        run = setup(cfg, tmp_path, distributed.Dist(), cleanup, stop)
        assert (run.plan.rounds, run.plan.eval_every, run.plan.total_steps) == (3, 1, 6)
        ro, metrics = run_round(run, 1)
        a = cfg.algo
        assert len(ro.rewards) == a.steps_per_generation * a.prompts_per_step * a.group_size == 8
        assert ro.group_size == a.group_size and len(ro.problems) == 4
        assert ro.old_logprobs is not None and ro.old_logprobs.shape[0] == 8  # A=2: pi_old recomputed (or audited)
        assert metrics["reward/mean"] == pytest.approx(sum(ro.rewards) / 8)
        assert metrics["perf/samples"] == 8 and "eval/pass@1" in metrics  # eval every round here
        for key in ("time/generate", "time/reward", "time/old_logprobs", "time/update", "time/sync", "iw/mean",
                    "train/grad_norm", "train/lr"):
            assert key in metrics, key
        assert run.log.history[-1]["round"] == 1
        path = save(run, 1)
        assert (path / "trainer_state.pt").exists()
    assert OmegaConf.to_yaml(cfg) == before  # nothing derived was written back into the config
    saved = OmegaConf.load(path / "config.yaml")
    assert saved.train.rounds == cfg.train.rounds and saved.eval.every == cfg.eval.every


def test_plan_resolves_samples_into_rounds_and_eval_schedule():
    import torch

    cfg = compose(TINY + ["train.samples=24", "eval.every_samples=16", "algo.prompts_per_step=2"])
    plan = make_plan(cfg, torch.device("cpu"))
    # a round is A x M x G = 2 x 2 x 2 = 8 completions
    assert (plan.rounds, plan.eval_every) == (3, 2)
    assert [plan.evaluates_after(r) for r in (1, 2, 3)] == [False, True, True]  # and always after the last
    assert plan.precision in ("none", "bf16") and plan.sampler in ("hf", "vllm")
    # a prompt's seed depends on its place in the round only, not on which rank draws it with which others
    pair = plan.round_sampling(5, [0, 3]).prompt_seeds
    assert pair == [plan.round_sampling(5, [0]).prompt_seeds[0], plan.round_sampling(5, [3]).prompt_seeds[0]]
    assert plan.round_sampling(6, [0]).prompt_seeds != plan.round_sampling(5, [0]).prompt_seeds
