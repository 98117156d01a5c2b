"""Every loss computes what it says through the real update path: the raw (unclipped) gradient of a
mini-batch does not depend on how it is cut into micro-batches, nothing non-finite reaches the weights,
and the logged metrics describe the whole mini-batch."""

from __future__ import annotations

import pytest
import torch

from conftest import TINY, compose
from rapid_cli.algorithms import LOSSES, loss_options
from rapid_cli.samplers.hf import HFSampler
from rapid_cli.tasks import make_task
from rapid_cli.trainer import PromptStream, build_optimizer, recompute_logprobs, update_minibatch
from rapid_cli.types import Rollouts, SamplingParams

ALGOS = ["rapid", "grpo", "pg", "dapo", "dr_grpo"]


def rollouts(cfg, model, tok, max_tokens=8) -> Rollouts:
    """One round of real samples from the tiny model, with rewards that leave some groups all equal
    (DAPO drops those) and completions of unequal lengths (token means differ from row means)."""
    task = make_task(cfg.task, seed=0)
    a = cfg.algo
    problems = PromptStream(task.train, 0).next(a.steps_per_generation * a.prompts_per_step)
    prompts = [task.prompt_ids(p, tok) for p in problems]
    gens = HFSampler(model, tok).generate(prompts, SamplingParams(n=a.group_size, max_tokens=max_tokens, seed=3))
    for i in range(len(gens)):  # a random model rarely stops: cut rows to unequal lengths (still real prefixes)
        n = max_tokens - (3 * i) % 7
        gens.completion_ids[i], gens.logprobs[i] = gens.completion_ids[i][:n], gens.logprobs[i][:n]
    rewards = [float(i % 3 == 0) for i in range(len(gens))]  # groups of 2: [1,0] [0,1] [0,0] [1,0]
    return Rollouts(problems, prompts, gens, rewards, a.group_size)


def shifted(rows: list[list[float]], size: float) -> list[list[float]]:
    """Log-probs moved by a fixed +-size pattern, so ratios land on both sides of the PPO clip."""
    return [[x + size * ((i + j) % 3 - 1) for j, x in enumerate(r)] for i, r in enumerate(rows)]


def raw_gradient(model, cfg, ro, old, ref, micro: int, pad_id: int) -> torch.Tensor:
    """The accumulated gradient of one real `update_minibatch` call, read before any clipping could act
    (optimizer.max_grad_norm=null) and after the step (which does not touch .grad)."""
    cfg.algo.micro_batch_size = micro
    loss_fn = LOSSES[cfg.algo.name]
    opt, sched = build_optimizer(cfg.optimizer, model, 1)
    update_minibatch(model, opt, sched, ro, old, ro.group_slice(0, cfg.algo.prompts_per_step), cfg, loss_fn,
                     loss_options(loss_fn, cfg.algo), pad_id, "cpu", ref)
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


@pytest.mark.parametrize("algo", ALGOS)
def test_unclipped_gradient_does_not_depend_on_the_micro_batch_size(tiny_policy, algo):
    model, tok = tiny_policy
    state = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = compose(TINY + [f"algo={algo}", "algo.group_size=2", "algo.prompts_per_step=4", "algo.steps_per_generation=1",
                          "optimizer.max_grad_norm=null", "optimizer.lr=1e-3"])
    ro = rollouts(cfg, model, tok)
    assert len({len(c) for c in ro.generations.completion_ids}) > 1  # unequal lengths: token and row means differ
    pad = tok.pad_token_id
    now = recompute_logprobs(model, ro, pad, 8, 1.0, "cpu")
    old = shifted(now, 0.15)
    ref = shifted(now, -0.3) if cfg.algo.kl_beta else None
    try:
        grads = {}
        for micro in (2, 4, 8):  # 4 micro-batches of one group, 2 of two groups, the whole mini-batch at once
            model.load_state_dict(state)
            grads[micro] = raw_gradient(model, cfg, ro, old, ref, micro, pad)
    finally:
        model.load_state_dict(state)
    assert grads[8].norm() > 1e-3
    for micro in (2, 4):
        rel = ((grads[micro] - grads[8]).norm() / grads[8].norm()).item()
        assert rel < 2e-6, (algo, micro, rel)
        assert torch.allclose(grads[micro], grads[8], rtol=1e-4, atol=1e-8)
