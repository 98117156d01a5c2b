"""algo.skip_zero_advantage: prompt groups whose gradient is exactly zero are never forwarded, and the
round's result is the one without skipping -- weights, AdamW's state and the schedule -- for every
algorithm, on rollouts that mix all-zero, all-one and mixed groups, over A = 2 steps (so w != 1 on the
second). The two-rank case (ranks that skip unequally) is in tests/test_distributed_ranks.py."""

from __future__ import annotations

import pytest
import torch

from conftest import TINY, compose
from rapid_cli.algorithms import ALGORITHMS
from rapid_cli.behaviour import BehaviourLogprobs
from rapid_cli.distributed import Dist
from rapid_cli.learner import Audit, Learner, Share
from rapid_cli.samplers.hf import HFSampler
from rapid_cli.tasks import make_task
from rapid_cli.trainer import PromptStream
from rapid_cli.types import Rollouts, SamplingParams

# groups of 2, 4 groups per step, 2 steps: step 1 [0,0] [1,1] [1,0] [0,0]; step 2 [1,1] [0,0] [0,1] [0,0]
REWARDS = [0, 0, 1, 1, 1, 0, 0, 0, 1, 1, 0, 0, 0, 1, 0, 0]
ALL_ZERO = [0.0] * 16


def round_of(cfg, model, tok, rewards) -> Rollouts:
    task = make_task(cfg.task, seed=0)
    a = cfg.algo
    problems = PromptStream(task.train, 0).next(a.steps_per_generation * a.prompts_per_step)
    prompts = [task.prompt_ids(p, tok) for p in problems]
    gens = HFSampler(model, tok).generate(prompts, SamplingParams(n=a.group_size, max_tokens=6, seed=5))
    for i in range(len(gens)):  # unequal lengths: token means and row means differ
        n = 6 - (2 * i) % 5
        gens.completion_ids[i], gens.logprobs[i] = gens.completion_ids[i][:n], gens.logprobs[i][:n]
    return Rollouts(problems, prompts, gens, [float(r) for r in rewards], a.group_size)


def run_round(cfg, model, tok, rewards):
    """The trainer's update phases for one round, as trainer._train runs them: (steps, weights after,
    optimizer state after, the rollouts)."""
    a = cfg.algo
    ro = round_of(cfg, model, tok, rewards)
    learner = Learner(model, a, cfg.optimizer, pad_id=tok.pad_token_id, temperature=1.0, total_steps=4)
    behaviour = BehaviourLogprobs(a, Dist(), {})
    ro.moving = learner.moving_rows(ro, behaviour.own_rows(ro))
    ro.old_logprobs, ro.old_rows = behaviour(learner, ro)
    if learner.reference is not None:
        ro.ref_logprobs = learner.logprobs(ro, reference=True)
    M = a.prompts_per_step
    steps = []
    # whether each forward of the model during the steps ran with autograd on (a backward to follow)
    learner.step_forwards = []
    model.register_forward_hook(lambda *_: learner.step_forwards.append(torch.is_grad_enabled()))
    for i in range(a.steps_per_generation):
        steps.append(learner.step(ro, ro.group_slice(i * M, M), audit=i == 0))
        steps[-1].grad = torch.cat([p.grad.flatten() for p in model.parameters()])  # raw: max_grad_norm=null
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return steps, weights, learner, ro


def both_ways(algo, rewards, extra=()):
    """The same round with skipping off and on, from the same weights: {skip: (steps, weights, learner, ro)}."""
    from rapid_cli.policy import load_policy

    out = {}
    for skip in (False, True):
        cfg = compose(TINY + [f"algo={algo}", "algo.group_size=2", "algo.prompts_per_step=4",
                              "algo.steps_per_generation=2", "algo.micro_batch_size=4", "optimizer.lr=1e-3",
                              "optimizer.max_grad_norm=null", "optimizer.weight_decay=0.1",
                              f"algo.skip_zero_advantage={str(skip).lower()}", *extra])
        model, tok, _ = load_policy(cfg.model, torch.device("cpu"))  # seeded: the same start both times
        out[skip] = run_round(cfg, model, tok, rewards)
    return out


def assert_same_weights(a: dict, b: dict, atol: float = 5e-5):
    """Weights after AdamW agree to float rounding. AdamW divides by sqrt(v): a gradient entry that is 0 up to
    summation-order rounding (~1e-10) still moves its weight by up to lr in a sign the rounding picks, so a
    handful of entries differ by a few % of lr (5e-5 = 5% of one step at lr 1e-3; tests/test_distributed.py
    meets the same), while all but 1 in 10^3 agree to 1e-7 (here ~1.5 in 10^4 do not); the raw gradients are
    compared far tighter."""
    diffs = torch.cat([(a[k] - b[k]).abs().flatten() for k in a])
    assert diffs.max().item() <= atol, diffs.max().item()
    assert (diffs > 1e-7).float().mean().item() < 1e-3, (diffs > 1e-7).float().mean().item()


# every registered algorithm (a new one cannot miss this test), packed and padded (algo.packing=false)
@pytest.mark.parametrize(("algo", "packing"), [(a, True) for a in sorted(ALGORITHMS)] + [("rapid", False),
                                                                                           ("dapo", False)])
def test_skipping_leaves_the_round_unchanged_and_skips_rows(algo, packing):
    extra = ["algo.kl_beta=0"] if algo == "grpo" else []  # GRPO's KL term has a gradient everywhere: below
    extra.append(f"algo.packing={str(packing).lower()}")
    runs = both_ways(algo, REWARDS, extra)
    (full, w_full, l_full, _), (skip, w_skip, l_skip, ro) = runs[False], runs[True]
    # the premise: rows really were left out. RAPID: the all-zero groups on both steps, the all-one group on
    # step 1 (w = 1 there); the baselines: every all-equal group
    skipped = [s.skipped_rows for s in skip]
    assert skipped == ([6, 4] if algo == "rapid" else [6, 6]), skipped
    assert [s.skipped_rows for s in full] == [0, 0]
    # step 1 from the same weights: the raw gradients agree as micro-batch cuts do (tests/test_numerics.py);
    # step 2 starts from weights that differ by step 1's rounding, which AdamW amplifies (below)
    assert torch.allclose(full[0].grad, skip[0].grad, rtol=1e-4, atol=1e-8)
    for a, b in zip(full, skip, strict=True):
        assert ((a.grad - b.grad).norm() / a.grad.norm()).item() < 1e-4
        assert b.grad_norm == pytest.approx(a.grad_norm, rel=1e-4)
        assert b.loss == pytest.approx(a.loss, rel=1e-5, abs=1e-7)
        assert b.lr == a.lr
    # raw gradients (max_grad_norm=null) and then AdamW: the weights after the round agree to float rounding
    assert_same_weights(w_full, w_skip)
    for pa, pb in zip(l_full.optimizer.state.values(), l_skip.optimizer.state.values(), strict=True):
        assert pa["step"] == pb["step"]
        # elementwise to 1e-4 of the tensor's largest entry: a squared gradient entry that cancels to ~1e-10 differs
        # by more than rtol in relative terms with the summation order (seen on an AVX512 CPU); a step that
        # skipped AdamW's decay would move every entry by (1 - beta2) = 1e-3 of itself, the largest included
        v = pa["exp_avg_sq"]
        assert torch.allclose(v, pb["exp_avg_sq"], rtol=1e-4, atol=1e-4 * v.abs().max().item())
    # pi_old was computed for the moving rows of step 2 only; the others were never forwarded
    past_first = torch.arange(len(ro.rewards)) >= 8
    never = past_first & ~ro.moving
    assert never.any() and (ro.old_logprobs[never] == 0).all()
    assert (ro.old_logprobs[past_first & ro.moving].abs().sum(-1) > 0).all()


def test_grpo_with_a_kl_term_skips_nothing():
    runs = both_ways("grpo", REWARDS)  # its preset: kl_beta = 0.04
    assert [s.skipped_rows for s in runs[True][0]] == [0, 0]
    assert runs[True][3].moving.all()
    assert_same_weights(runs[False][1], runs[True][1], atol=0)


@pytest.mark.parametrize("algo", ["rapid", "dapo"])
def test_a_round_with_nothing_to_compute_still_steps_adamw_and_the_schedule(algo):
    """Every group all zero: no backward at all, yet each step is AdamW's step on a zero gradient (weight
    decay and the moments move the weights) and counts for the schedule. One forward per step without
    autograd, of one group, checks that the policy has not diverged (a non-finite log-prob refuses the step,
    as it would have refused the step that computed every row) and audits the sampler on the first step."""
    runs = both_ways(algo, ALL_ZERO, ["optimizer.schedule=cosine"])
    (_, w_full, l_full, _), (skip, w_skip, l_skip, _) = runs[False], runs[True]
    assert [s.skipped_rows for s in skip] == [8, 8]
    assert l_skip.step_forwards == [False, False]  # a forward-only check per step; the full run backpropagates
    assert l_full.step_forwards and all(l_full.step_forwards)
    assert all(s.grad_norm == 0 and not s.skipped for s in skip)
    assert_same_weights(w_full, w_skip, atol=0)
    assert l_skip.scheduler.last_epoch == l_full.scheduler.last_epoch == 2
    from rapid_cli.policy import load_policy

    start = load_policy(compose(TINY).model, torch.device("cpu"))[0].state_dict()
    assert any(not torch.equal(start[k], w_skip[k]) for k in start)  # weight decay moved them, no gradient did
    assert skip[0].audit is not None and skip[0].audit.tokens > 0
    assert skip[0].means == {} or set(skip[0].means) == {"groups_dropped_frac"}


def test_a_diverged_policy_is_refused_its_step_even_when_nothing_is_computed():
    """Nothing moves, so nothing is backpropagated; but a policy whose log-probs are NaN would have made the
    step that computed every row non-finite: the probe's forward refuses the step the same way (weights,
    AdamW and the schedule untouched, the step counted as skipped for SkipGuard)."""
    from rapid_cli.policy import load_policy

    cfg = compose(TINY + ["algo.group_size=2", "algo.prompts_per_step=4", "algo.steps_per_generation=2"])
    model, tok, _ = load_policy(cfg.model, torch.device("cpu"))
    ro = round_of(cfg, model, tok, ALL_ZERO)
    learner = Learner(model, cfg.algo, cfg.optimizer, pad_id=tok.pad_token_id, temperature=1.0, total_steps=4)
    ro.moving = learner.moving_rows(ro, BehaviourLogprobs(cfg.algo, Dist(), {}).own_rows(ro))
    assert not ro.moving.any()
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = learner.step(ro, ro.group_slice(0, 4))
    assert out.skipped and out.skipped_rows == 8
    assert not learner.optimizer.state and learner.scheduler.last_epoch == 0
    assert all(torch.allclose(v, before[k], rtol=0, atol=0, equal_nan=True) for k, v in model.state_dict().items())


def test_rapid_after_the_first_step_still_trains_all_one_groups():
    """On step 2 w != 1, so a group whose rewards are all 1 has A_i = 1 - mean(min(w, c)) != 0: it is kept."""
    cfg = compose(TINY + ["algo.group_size=2", "algo.prompts_per_step=4", "algo.steps_per_generation=2"])
    from rapid_cli.algorithms import get

    own = torch.arange(16) < 8
    zero = get("rapid").zero_gradient_rows(torch.tensor(REWARDS, dtype=torch.float32), 2,
                                           {"iw_clip": cfg.algo.iw_clip, "eps": cfg.algo.eps}, own)
    groups = zero.view(-1, 2)[:, 0].tolist()
    assert groups == [True, True, False, True, False, True, False, True]
    # with iw_clip < 1 the all-one group's baseline at w = 1 is c * 1 != 1: kept on step 1 as well
    clipped = get("rapid").zero_gradient_rows(torch.tensor(REWARDS, dtype=torch.float32), 2,
                                              {"iw_clip": 0.5, "eps": 0.2}, own)
    assert clipped.view(-1, 2)[:, 0].tolist()[1] is False


def test_a_rank_with_nothing_to_compute_audits_its_stand_in_once():
    """Under DDP/FSDP2 a rank whose rows of the first step all skip repeats its stand-in group, uncounted, as
    many times as another rank has passes; it audited the sampler on every repeat, so `iw/sampler_audit_tokens`
    counted the same tokens once per pass. One rank's passes, as `Learner._share` lays them out for it."""
    from rapid_cli.policy import load_policy

    cfg = compose(TINY + ["algo.group_size=2", "algo.prompts_per_step=4", "algo.steps_per_generation=2"])
    model, tok, _ = load_policy(cfg.model, torch.device("cpu"))
    ro = round_of(cfg, model, tok, ALL_ZERO)
    learner = Learner(model, cfg.algo, cfg.optimizer, pad_id=tok.pad_token_id, temperature=1.0, total_steps=4)
    part = ro.take([0])
    once = Share(part, torch.tensor([], dtype=torch.long), [(slice(0, 2), False)])
    thrice = Share(part, torch.tensor([], dtype=torch.long), [(slice(0, 2), False)] * 3)
    with learner.autocast():
        seen = [learner._accumulate(share, 1.0, audit=True)[1] for share in (once, thrice)]
    assert seen[0].tokens == part.completion_mask.sum().item() > 0
    assert seen[1] == seen[0], seen
    assert isinstance(seen[1], Audit)
