"""rapid_loss against hand-computed numbers."""

import math

import pytest
import torch

from rapid_cli.algorithms.losses import rapid_loss


def test_first_minibatch_is_plain_group_mean_and_gradient_matches_hand_computation():
    # On-policy (w = 1): baseline = group mean, advantages r - mean, ratio 1.
    logprobs = torch.tensor([[-1.0, -2.0], [-0.5, -0.5], [-1.0, -1.0], [-3.0, -1.0]], requires_grad=True)
    mask = torch.tensor([[1, 1], [1, 0], [1, 1], [1, 1]])
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0])
    loss, m = rapid_loss(logprobs, logprobs.detach().clone(), mask, rewards, group_size=2)
    # advantages: group 0 -> [0.5, -0.5], group 1 -> [0, 0]; loss = -(1/B) sum_i A_i = 0
    assert m["iw_mean"] == pytest.approx(1.0)
    assert m["iw_clip_frac"] == 0.0
    assert m["ess"] == pytest.approx(4.0)
    assert loss.item() == pytest.approx(0.0, abs=1e-7)
    loss.backward()
    # d loss / d logprob_it = -(1/B) * A_i / |y_i| * m_it
    expected = torch.tensor([[-0.5 / 2 / 4, -0.5 / 2 / 4], [0.5 / 1 / 4, 0.0], [0.0, 0.0], [0.0, 0.0]])
    assert torch.allclose(logprobs.grad, expected, atol=1e-7)


def test_importance_weight_is_clipped_at_c_inside_the_baseline():
    # Group of 2: sequence 0 has log w = 1 (w = e > c = 2), sequence 1 is on-policy.
    old = torch.zeros(2, 2)
    logprobs = torch.tensor([[0.5, 0.5], [0.0, 0.0]])
    mask = torch.ones(2, 2)
    rewards = torch.tensor([1.0, 0.0])
    loss, m = rapid_loss(logprobs, old, mask, rewards, group_size=2, iw_clip=2.0, eps=None)
    # w~ = [2, 1]; b = (2*1 + 1*0)/2 = 1; A = [0, -1]
    # unclipped loss: seq 1 has rho = 1 on both tokens: -(1 * -1) = 1 per token; mean over batch = 0.5
    assert loss.item() == pytest.approx(0.5)
    assert m["iw_max"] == pytest.approx(math.e, rel=1e-6)
    assert m["iw_clip_frac"] == pytest.approx(0.5)
    assert m["iw_clipped_mean"] == pytest.approx(1.5)
    assert m["adv_mean"] == pytest.approx(-0.5)
    # without the clip the baseline would be (e*1)/2 and the loss differs
    loss_noclip, _ = rapid_loss(logprobs, old, mask, rewards, group_size=2, iw_clip=None, eps=None)
    # explicit: seq0 A = 1 - e/2, rho = e^0.5 per token -> per-seq -e^0.5 * A; seq1 A = -e/2, rho = 1 -> e/2
    a0 = 1 - math.e / 2
    want = 0.5 * (-math.exp(0.5) * a0) + 0.5 * (math.e / 2)
    assert loss_noclip.item() == pytest.approx(want, rel=1e-5)


def test_padding_is_ignored():
    torch.manual_seed(0)
    lp = torch.randn(4, 3)
    old = lp + 0.1 * torch.randn(4, 3)
    mask = torch.ones(4, 3)
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0])
    base, mb = rapid_loss(lp, old, mask, rewards, group_size=2)
    # Append 5 padding positions filled with large junk: nothing may change.
    junk_lp = torch.cat([lp, 50 * torch.randn(4, 5)], 1)
    junk_old = torch.cat([old, -50 * torch.randn(4, 5)], 1)
    junk_mask = torch.cat([mask, torch.zeros(4, 5)], 1)
    padded, mp = rapid_loss(junk_lp, junk_old, junk_mask, rewards, group_size=2)
    assert padded.item() == pytest.approx(base.item(), rel=1e-6)
    for key in ("iw_mean", "iw_max", "ess", "ppo_clip_frac", "adv_mean"):
        assert mp[key] == pytest.approx(mb[key], rel=1e-6)


def test_groups_are_contiguous_and_kept_whole():
    # The baseline of a group depends only on its own rows: permuting whole groups permutes nothing else,
    # while mixing rows across groups (the authors' shuffle bug) changes the advantages.
    torch.manual_seed(1)
    lp, old = torch.randn(6, 4), torch.randn(6, 4) * 0.1
    mask = torch.ones(6, 4)
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0])
    loss, _ = rapid_loss(lp, lp + old, mask, rewards, group_size=2)
    perm = torch.tensor([4, 5, 0, 1, 2, 3])  # whole groups reordered
    loss_perm, _ = rapid_loss(lp[perm], (lp + old)[perm], mask, rewards[perm], group_size=2)
    assert loss_perm.item() == pytest.approx(loss.item(), rel=1e-6)
    mixed = torch.tensor([0, 2, 1, 4, 3, 5])  # rows from different prompts share a "group"
    loss_mixed, _ = rapid_loss(lp[mixed], (lp + old)[mixed], mask, rewards[mixed], group_size=2)
    assert loss_mixed.item() != pytest.approx(loss.item(), rel=1e-3)
    with pytest.raises(ValueError, match="whole number of groups"):
        rapid_loss(lp[:5], old[:5], mask[:5], rewards[:5], group_size=2)


def test_ppo_clip_stops_gradient_beyond_one_plus_eps():
    old = torch.zeros(2, 1)
    logprobs = torch.tensor([[0.5], [0.0]], requires_grad=True)  # rho_0 = e^0.5 = 1.65 > 1.2
    rewards = torch.tensor([1.0, 0.0])
    loss, m = rapid_loss(logprobs, old, torch.ones(2, 1), rewards, group_size=2, iw_clip=10.0, eps=0.2)
    loss.backward()
    # seq 0: w = 1.65, b = 1.65/2 -> A_0 = 1 - 0.824 > 0 and rho > 1 + eps -> clipped: zero gradient
    assert logprobs.grad[0, 0].item() == 0.0
    assert logprobs.grad[1, 0].item() != 0.0
    assert m["ppo_clip_frac"] == pytest.approx(0.5)
    # the unclipped variant keeps that gradient
    lp2 = logprobs.detach().clone().requires_grad_(True)
    rapid_loss(lp2, old, torch.ones(2, 1), rewards, group_size=2, iw_clip=10.0, eps=None)[0].backward()
    assert lp2.grad[0, 0].item() < 0.0
