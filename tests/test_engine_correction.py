"""algo.engine_correction: the samples come from the engine's mu, the losses assume the trainer's pi_old.
Hand-computed weights for tis and mis, the loss of every algorithm re-weighted by them, the exact identity
when mu equals pi_old, and `auto`'s decision."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import TINY, compose
from rapid_cli.algorithms import ALGORITHMS
from rapid_cli.algorithms.contract import LossBatch
from rapid_cli.algorithms.engine import engine_weights
from rapid_cli.behaviour import BehaviourLogprobs
from rapid_cli.distributed import Dist

OLD = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -0.2, 0.0], [-1.0, -1.0, -1.0], [-2.0, -0.1, 0.0]])
MU = torch.tensor([[-1.5, -3.0, -0.5], [-0.3, -0.9, 0.0], [-1.0, -1.2, -0.9], [-0.5, -0.1, 0.0]])
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0], [1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])


def test_tis_truncates_each_tokens_ratio_at_the_cap():
    w, stats = engine_weights(OLD, MU, MASK, "tis", cap=2.0)
    want = [[math.exp(0.5), 2.0, 1.0], [1.0, 2.0, 0.0], [1.0, math.exp(0.2), math.exp(-0.1)],
            [math.exp(-1.5), 1.0, 0.0]]
    assert torch.allclose(w, torch.tensor(want), rtol=1e-6)  # exp(-1.0 + 2.0) = e > 2, exp(0.7) = 2.01 > 2: cut
    assert stats["engine_truncated_frac"] == pytest.approx(2 / 10)
    assert stats["engine_ratio_max"] == pytest.approx(math.e, rel=1e-6)
    assert stats["engine_weight_mean"] == pytest.approx(sum(sum(r) for r in want) / 10, rel=1e-6)


def test_the_largest_ratio_is_a_tokens_not_paddings():
    """Every token's ratio below 1: the reported maximum is the largest of them, not padding's exp(0) = 1."""
    _, stats = engine_weights(OLD - 1.0, OLD, MASK, "tis", cap=2.0)
    assert stats["engine_ratio_max"] == pytest.approx(math.exp(-1.0), rel=1e-6)


def test_mis_drops_whole_sequences_whose_ratio_leaves_the_band():
    # sequence log-ratios: row 0 0.5 + 1.0 + 0 = 1.5 (e^1.5 = 4.5 > 2: dropped); row 1 0.7 (e^0.7 = 2.01 > 2:
    # dropped, just); row 2 0.1 (kept); row 3 -1.5 (e^-1.5 = 0.22 < 1/2: dropped)
    w, stats = engine_weights(OLD, MU, MASK, "mis", cap=2.0)
    assert w.tolist() == [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]
    assert stats["engine_masked_frac"] == pytest.approx(0.75)


@pytest.mark.parametrize("mode", ["tis", "mis"])
@pytest.mark.parametrize("algo", ["rapid", "grpo", "pg", "dapo", "dr_grpo"])
def test_every_loss_weights_each_token_term(algo, mode):
    """The loss with weights equals the hand sum of weighted token terms over the same denominator: checked as
    the gradient of each token's log-prob, which is its term's own gradient times its weight."""
    cfg = compose([f"algo={algo}"])
    record = ALGORITHMS[cfg.algo.name]
    opts = record.loss_options(cfg.algo)
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0])
    extra = {"ref_logprobs": OLD * MASK} if cfg.algo.kl_beta else {}
    weights, _ = engine_weights(OLD, MU, MASK, mode, cap=2.0)
    grads = {}
    for name, w in (("plain", None), ("weighted", weights)):
        lp = (OLD + 0.05).clone().requires_grad_(True)
        batch = LossBatch(lp, OLD, MASK, rewards, 2, denominator=4.0, token_weights=w, **extra)
        record.compute(batch, opts).loss.backward()
        grads[name] = lp.grad
    assert grads["plain"].abs().sum() > 0
    assert torch.allclose(grads["weighted"], grads["plain"] * weights, atol=1e-7)


# The step's log-probs: pi_old moved by these (ratios exp(D) = 0.74-1.35: some inside PPO's clip, some cut)
D = [[0.1, -0.3, 0.25], [0.05, 0.2, 0.0], [-0.1, 0.0, 0.3], [0.15, -0.05, 0.0]]
REWARDS = [1.0, 0.0, 1.0, 1.0]  # a mixed group, then an all-one group (DAPO drops it; RAPID's baseline != 1)
OPTIONS = {"rapid": {"iw_clip": 2.0, "eps": 0.2}, "grpo": {"eps": 0.2, "kl_beta": 0.04},
           "pg": {"eps": 0.2, "kl_beta": 0.0}, "dapo": {"eps": 0.2, "eps_high": 0.28, "drop_equal_groups": True},
           "dr_grpo": {"eps": 0.2, "norm_len": 256}}


def hand_loss(algo: str, weights: list[list[float]]) -> float:
    """docs/algorithm.md's losses written out with Python floats, token by token, from the definitions."""
    o = OPTIONS[algo]
    rows, G, mask = range(4), 2, MASK.tolist()
    old, lp = OLD.tolist(), [[OLD[i, t].item() + D[i][t] for t in range(3)] for i in range(4)]
    if algo == "rapid":  # A_i = r_i - mean_j min(w_j, c) r_j, w_j = exp(sum_t (logp - old)) over the mask
        w = [min(math.exp(sum(D[i][t] * mask[i][t] for t in range(3))), o["iw_clip"]) for i in rows]
        adv = [REWARDS[i] - sum(w[j] * REWARDS[j] for j in (i // G * G, i // G * G + 1)) / G for i in rows]
    else:  # group z-score (torch's std: n - 1), or centred only (Dr. GRPO)
        adv = []
        for i in rows:
            group = REWARDS[i // G * G: i // G * G + G]
            mean = sum(group) / G
            std = math.sqrt(sum((r - mean) ** 2 for r in group) / (G - 1))
            adv.append((REWARDS[i] - mean) / (std + 1e-4) if algo != "dr_grpo" else REWARDS[i] - mean)
    low, high = 1 - o["eps"], 1 + o.get("eps_high", o["eps"])
    total, denominator = 0.0, 0.0
    for i in rows:
        kept = algo != "dapo" or len(set(REWARDS[i // G * G: i // G * G + G])) > 1
        row = 0.0
        for t in range(3):
            if not mask[i][t]:
                continue
            rho = math.exp(D[i][t])
            term = -min(rho * adv[i], min(max(rho, low), high) * adv[i])
            if o.get("kl_beta"):  # k3 to the reference (OLD here): exp(ref - logp) - (ref - logp) - 1
                d = old[i][t] - lp[i][t]
                term += o["kl_beta"] * (math.exp(d) - d - 1)
            row += weights[i][t] * term
        n = sum(mask[i])
        if algo == "dapo":  # one token mean over the kept rows' tokens
            total, denominator = total + row * kept, denominator + n * kept
        elif algo == "dr_grpo":  # token sum over a constant length per row
            total, denominator = total + row, denominator + o["norm_len"]
        else:  # the mean per sequence, then over the rows
            total, denominator = total + row / n, denominator + 1
    return total / denominator


def hand_engine_weights(mode: str, cap: float) -> list[list[float]]:
    """tis: min(pi_old / mu, C) per token; mis: 1 for a row whose sequence ratio is in [1/C, C], else 0."""
    ratio = [[math.exp(OLD[i, t].item() - MU[i, t].item()) if MASK[i, t] else 0.0 for t in range(3)]
             for i in range(4)]
    if mode == "none":
        return [[float(MASK[i, t]) for t in range(3)] for i in range(4)]
    if mode == "tis":
        return [[min(r, cap) for r in row] for row in ratio]
    seq = [sum(math.log(r) for r in row if r) for row in ratio]
    return [[float(abs(s) <= math.log(cap)) * float(MASK[i, t]) for t in range(3)] for i, s in enumerate(seq)]


@pytest.mark.parametrize("mode", ["none", "tis", "mis"])
@pytest.mark.parametrize("algo", ["rapid", "grpo", "pg", "dapo", "dr_grpo"])
def test_each_loss_value_by_hand_for_each_correction(algo, mode):
    """The loss itself, not only its gradient's shape: each algorithm's preset options, each engine correction,
    on a batch whose ratios straddle the PPO clip, equal to the definitions written out by hand."""
    cfg = compose([f"algo={algo}"])
    record = ALGORITHMS[cfg.algo.name]
    opts = record.loss_options(cfg.algo)
    assert opts == OPTIONS[algo]  # the presets the hand computation writes out
    # cap 2.5: tis cuts one token (e^1 = 2.72), mis keeps rows 1 (e^0.7 = 2.01) and 2, so no loss is 0
    weights, _ = engine_weights(OLD, MU, MASK, mode, cap=2.5)
    lp = OLD + torch.tensor(D)
    extra = {"ref_logprobs": OLD * MASK} if opts.get("kl_beta") else {}
    batch = LossBatch(lp, OLD, MASK, torch.tensor(REWARDS), 2, token_weights=None if mode == "none" else weights,
                      **extra)
    got = record.compute(batch, opts).loss.item()
    want = hand_loss(algo, hand_engine_weights(mode, 2.5))
    assert want != 0 and got == pytest.approx(want, rel=1e-5, abs=1e-7), (got, want)


def test_when_mu_is_pi_old_the_correction_is_exactly_one_and_the_step_unchanged(tiny_policy):
    """A sampler whose log-probs are the trainer's (fp32 HF): tis weights are exp(0) = 1 exactly, and the step's
    raw gradient is bit for bit the uncorrected one."""
    from test_numerics import learner, rollouts

    model, tok = tiny_policy
    state = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = compose(TINY + ["algo.group_size=2", "algo.prompts_per_step=4", "algo.steps_per_generation=1",
                          "optimizer.max_grad_norm=null"])
    ro = rollouts(cfg, model, tok)
    ro.sampler_logprobs = learner(cfg, model, tok).logprobs(ro)  # mu = pi_old, to the bit
    grads, metrics = {}, {}
    try:
        for mode in ("none", "tis", "mis"):
            model.load_state_dict(state)
            ro.engine_correction = mode
            metrics[mode] = learner(cfg, model, tok).step(ro, ro.group_slice(0, 4)).means
            grads[mode] = torch.cat([p.grad.flatten() for p in model.parameters()])
    finally:
        model.load_state_dict(state)
    assert torch.equal(grads["tis"], grads["none"]) and torch.equal(grads["mis"], grads["none"])
    assert metrics["tis"]["engine_weight_mean"] == 1.0 and metrics["mis"]["engine_masked_frac"] == 0.0


def _behaviour(extra, settings, gap=None):
    cfg = compose(TINY + extra)
    return BehaviourLogprobs(cfg.algo, Dist(), settings, {"trusted": False, "settings": settings}, gap)


class _Ro:
    def __init__(self, mu):
        self.sampler_logprobs = mu


def test_auto_corrects_where_mu_exists_and_differs():
    fp32 = {"engine_dtype": "float32", "mixed_precision": "none", "top_p": 1.0}
    bf16 = {"engine_dtype": "bfloat16", "mixed_precision": "bf16", "top_p": 1.0}
    mu = torch.zeros(2, 2)
    assert _behaviour([], fp32).engine_correction(_Ro(mu)) == "none"  # fp32 before any audit
    assert _behaviour([], bf16).engine_correction(_Ro(mu)) == "tis"  # 16 bits before any audit
    assert _behaviour([], bf16, gap=1e-4).engine_correction(_Ro(mu)) == "none"  # audited: they agree
    b = _behaviour([], fp32)
    b.after_round({"iw/sampler_seq_logw_gap_max": 0.3})  # the audit found a gap: from now on, tis
    assert b.engine_correction(_Ro(mu)) == "tis"
    assert _behaviour([], bf16).engine_correction(_Ro(None)) == "none"  # no mu reported
    assert _behaviour([], {**bf16, "top_p": 0.9}).engine_correction(_Ro(mu)) == "none"  # mu is not what it reports
    assert _behaviour(["algo.old_logprobs=sampler"], bf16).engine_correction(_Ro(mu)) == "none"  # pi_old is mu
    assert _behaviour(["algo.engine_correction=mis"], fp32).engine_correction(_Ro(mu)) == "mis"
    assert _behaviour(["algo.engine_correction=none"], bf16).engine_correction(_Ro(mu)) == "none"


def test_on_policy_with_sampler_mode_still_corrects():
    """algo.old_logprobs=sampler means mu stands in for pi_old only where a pi_old is needed: on-policy (A = 1)
    pi_old is the step's own detached log-probs, so the engine/trainer gap is there and an asked-for (or
    `auto`) correction applies; it was silently dropped."""
    bf16 = {"engine_dtype": "bfloat16", "mixed_precision": "bf16", "top_p": 1.0}
    mu = torch.zeros(2, 2)
    on_policy = ["algo.steps_per_generation=1", "algo.old_logprobs=sampler"]
    assert _behaviour([*on_policy, "algo.engine_correction=tis"], bf16).engine_correction(_Ro(mu)) == "tis"
    assert _behaviour(on_policy, bf16).engine_correction(_Ro(mu)) == "tis"  # auto, 16 bits before any audit
    assert _behaviour(["algo.old_logprobs=sampler", "algo.engine_correction=tis"], bf16
                      ).engine_correction(_Ro(mu)) == "none"  # A = 2: pi_old is mu, the ratio is 1


def test_an_explicit_correction_without_mu_is_one_line():
    from rapid_cli.errors import RapidError
    from rapid_cli.validation import validate

    with pytest.raises(RapidError, match=r"^algo.engine_correction=tis needs the sampler's own probabilities"):
        validate(compose(TINY + ["algo.engine_correction=tis", "sampler.top_p=0.9"]))
    with pytest.raises(RapidError, match=r"^algo.engine_cap=1.0 must be > 1"):
        validate(compose(TINY + ["algo.engine_cap=1.0"]))
