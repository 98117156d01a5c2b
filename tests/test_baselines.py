"""The baseline losses against hand-computed gradients, and each preset training the tiny model."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import TINY, compose
from rapid_cli.algorithms import ALGORITHMS
from rapid_cli.algorithms.baselines import DAPO, DR_GRPO, GRPO, kl_k3
from rapid_cli.algorithms.contract import LossBatch
from rapid_cli.errors import RapidError
from rapid_cli.trainer import train

R = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0])  # groups of 3: [1,0,0] informative, [0,1,1] informative
MASK = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0], [1, 1, 1], [1, 1, 0], [1, 0, 0]], dtype=torch.float32)


def grad_of(spec, **kw):
    lp = torch.zeros(6, 3, requires_grad=True)
    out = spec(LossBatch(lp, lp.detach(), MASK, R, 3), **kw)
    out.loss.backward()
    return lp.grad, out.metrics


def zscore(group):
    g = torch.tensor(group, dtype=torch.float32)
    return ((g - g.mean()) / (g.std() + 1e-4)).tolist()


def test_grpo_gradient_is_z_scored_advantage_over_sequence_length():
    grad, _ = grad_of(GRPO, kl_beta=0.0)
    adv = zscore([1, 0, 0]) + zscore([0, 1, 1])
    lengths = MASK.sum(-1)
    expected = torch.stack([-adv[i] / (6 * lengths[i]) * MASK[i] for i in range(6)])
    assert torch.allclose(grad, expected, atol=1e-6)


def test_grpo_kl_term_uses_k3_against_the_reference():
    lp = torch.zeros(6, 3, requires_grad=True)
    ref = torch.full((6, 3), -0.1)
    out = GRPO(LossBatch(lp, lp.detach(), MASK, torch.ones(6), 3, ref_logprobs=ref), kl_beta=0.04)
    loss, metrics = out.loss, out.metrics
    k3 = math.exp(-0.1) + 0.1 - 1  # all rewards equal: advantages 0, only the KL remains
    assert metrics["kl"] == pytest.approx(k3, rel=1e-5)
    assert loss.item() == pytest.approx(0.04 * k3, rel=1e-5)
    assert kl_k3(torch.zeros(2), torch.zeros(2)).abs().max() == 0


def test_dapo_token_mean_and_dropped_groups():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0])  # the second group is all equal: dropped
    lp = torch.zeros(6, 3, requires_grad=True)
    out = DAPO(LossBatch(lp, lp.detach(), MASK, r, 3))
    out.loss.backward()
    metrics = out.metrics
    n_tokens = MASK[:3].sum()  # only the kept group's tokens count
    adv = zscore([1, 0, 0])
    for i in range(3):
        assert torch.allclose(lp.grad[i], -adv[i] / n_tokens * MASK[i], atol=1e-6)
    assert lp.grad[3:].abs().max() == 0 and metrics["groups_dropped_frac"] == pytest.approx(0.5)


def test_dapo_clip_higher_keeps_gradient_up_to_eps_high():
    lp = torch.full((3, 1), math.log(1.25), requires_grad=True)  # ratio 1.25 against old = 0
    r, m = torch.tensor([1.0, 0.0, 0.0]), torch.ones(3, 1)
    DAPO(LossBatch(lp, torch.zeros(3, 1), m, r, 3), eps_high=0.28).loss.backward()
    assert lp.grad[0, 0] < 0  # positive advantage, ratio inside 1.28: still pushed up
    lp.grad = None
    DAPO(LossBatch(lp, torch.zeros(3, 1), m, r, 3), eps_high=None).loss.backward()
    assert lp.grad[0, 0] == 0  # the symmetric 0.2 clip cuts it


def test_dr_grpo_divides_the_token_sum_by_a_constant():
    grad, _ = grad_of(DR_GRPO, norm_len=10)
    adv = [2 / 3, -1 / 3, -1 / 3, -2 / 3, 1 / 3, 1 / 3]  # centred, not scaled
    expected = torch.stack([-adv[i] / (6 * 10) * MASK[i] for i in range(6)])
    assert torch.allclose(grad, expected, atol=1e-6)


@pytest.mark.parametrize("algo", ["grpo", "pg", "dapo", "dr_grpo"])
def test_presets_compose_and_pass_their_options(algo):
    cfg = compose([f"algo={algo}"])
    assert cfg.algo.steps_per_generation == 1
    opts = ALGORITHMS[cfg.algo.name].loss_options(cfg.algo)
    expected = {"grpo": {"eps", "kl_beta"}, "pg": {"eps", "kl_beta"}, "dapo": {"eps", "eps_high", "drop_equal_groups"},
                "dr_grpo": {"eps", "norm_len"}}[algo]
    assert set(opts) == expected
    if algo == "dr_grpo":
        assert opts["norm_len"] == cfg.sampler.max_tokens
    if algo == "pg":
        assert opts["kl_beta"] == 0


@pytest.mark.parametrize("algo", ["grpo", "dapo"])
def test_presets_train_the_tiny_model(tmp_path, algo):
    cfg = compose([o for o in TINY if not o.startswith("algo.steps_per_generation")]
                  + [f"algo={algo}", "algo.group_size=2", "algo.micro_batch_size=2", "algo.prompts_per_step=2",
                     "train.save_every=0"])
    out = train(cfg, tmp_path)
    assert "train/loss" in out and out["perf/samples"] == 2 * 1 * 2 * 2  # rounds x A=1 x M x G
    if algo == "grpo":
        assert out["train/kl"] >= 0
        assert "time/ref_logprobs" in out


def test_kl_beta_on_a_loss_without_a_reference_is_refused():
    from rapid_cli.validation import validate

    with pytest.raises(RapidError, match="algo.kl_beta"):
        validate(compose(["algo=rapid", "algo.kl_beta=0.1"]))


# Off-policy rows (old = 0): ratios inside and outside both clips, DAPO's 1.28 included (e^0.22 = 1.246).
LOG_RATIOS = [-0.3, -0.1, 0.0, 0.1, 0.22, 0.3]


def hand_loss(rewards, mask, group_size, *, scale, eps, eps_high, how, kl_beta=0.0, ref=-0.1, drop=False,
              norm_len=None):
    """The baseline loss written out in plain Python, term by term (docs/algorithm.md, "The baselines")."""
    rows, width = len(mask), len(mask[0])
    lp = [[LOG_RATIOS[(i * width + t) % len(LOG_RATIOS)] for t in range(width)] for i in range(rows)]
    adv, keep = [], []
    for g in range(0, rows, group_size):
        group = rewards[g : g + group_size]
        mean = sum(group) / group_size
        std = math.sqrt(sum((x - mean) ** 2 for x in group) / (group_size - 1))
        adv += [(x - mean) / (std + 1e-4) if scale else x - mean for x in group]
        keep += [not drop or max(group) > min(group)] * group_size
    upper = eps_high if eps_high is not None else eps
    total, tokens = 0.0, 0
    for i in range(rows):
        terms = []
        for t in range(width):
            if not mask[i][t]:
                continue
            rho = math.exp(lp[i][t])
            clipped = min(max(rho, 1 - eps), 1 + upper)
            d = ref - lp[i][t]
            terms.append(-min(rho * adv[i], clipped * adv[i]) + kl_beta * (math.exp(d) - d - 1))
        if keep[i]:
            total += sum(terms) / len(terms) if how == "seq_mean" else sum(terms)
            tokens += len(terms)
    if how == "seq_mean":
        return total / rows, lp
    return total / (tokens if how == "token_mean" else norm_len * rows), lp


@pytest.mark.parametrize("name", ["grpo", "dapo", "dr_grpo"])
def test_each_spec_built_loss_equals_the_hand_computed_one(name):
    rewards = [0.0, 1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0]  # the last group all equal: DAPO drops it
    mask = [[1, 1, 0], [1, 1, 1], [1, 0, 0], [1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 1, 0], [1, 0, 0]]
    spec, options, hand = {
        "grpo": (GRPO, {"kl_beta": 0.04}, {"scale": True, "eps": 0.2, "eps_high": None, "how": "seq_mean",
                                          "kl_beta": 0.04}),
        "dapo": (DAPO, {}, {"scale": True, "eps": 0.2, "eps_high": 0.28, "how": "token_mean", "drop": True}),
        "dr_grpo": (DR_GRPO, {"norm_len": 5}, {"scale": False, "eps": 0.2, "eps_high": None, "how": "token_sum",
                                               "norm_len": 5}),
    }[name]
    want, lp = hand_loss(rewards, mask, 3, **hand)
    m = torch.tensor(mask, dtype=torch.float32)
    batch = LossBatch(torch.tensor(lp), torch.zeros(9, 3), m, torch.tensor(rewards), 3,
                      ref_logprobs=torch.full((9, 3), -0.1) if spec.kl else None)
    out = spec(batch, **options)
    assert out.loss.item() == pytest.approx(want, rel=1e-5, abs=1e-6)  # float32: the terms cancel
    assert out.metrics["groups_dropped_frac"] == pytest.approx(1 / 3 if name == "dapo" else 0.0)
    assert ALGORITHMS[name].objective is spec


def test_a_spec_refuses_an_option_it_does_not_take():
    lp = torch.zeros(3, 1)
    with pytest.raises(TypeError, match="takes no option eps_high"):
        GRPO(LossBatch(lp, lp, torch.ones(3, 1), torch.tensor([1.0, 0.0, 0.0]), 3), eps_high=0.28)
    assert (GRPO.options, DR_GRPO.options) == ({"eps": 0.2, "kl_beta": 0.04}, {"eps": 0.2, "norm_len": None})
