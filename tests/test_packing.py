"""The packed update path (algo.packing: each prompt encoded once, completions without padding, the LM
head over completion tokens only, a chunk at a time) computes what the padded path computes: the same
log-probs and, for every algorithm, the same raw gradient of a real learner step."""

from __future__ import annotations

import pytest
import torch

from conftest import TINY, compose
from rapid_cli.policy import completion_logprobs, grouped_logprobs, pack, pack_groups
from test_numerics import ALGOS, learner, raw_gradient, rollouts, shifted


def _random_groups(vocab: int, group_size: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(5, vocab, (n,), generator=g).tolist() for n in (7, 12, 3)]
    lengths = torch.randint(0, 10, (len(prompts) * group_size,), generator=g).tolist()
    lengths[1] = 0  # an empty completion (the sampler stopped at once)
    completions = [torch.randint(5, vocab, (n,), generator=g).tolist() for n in lengths]
    return prompts, completions


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_packed_logprobs_and_their_gradients_equal_the_padded_ones(tiny_policy, temperature):
    model, _ = tiny_policy
    G = 4
    prompts, completions = _random_groups(model.config.vocab_size, G, seed=1)
    weights = torch.linspace(-1, 1, len(completions) * max(len(c) for c in completions)).view(len(completions), -1)

    def run(forward):
        model.zero_grad(set_to_none=True)
        lp, mask = forward()
        (lp * mask * weights).sum().backward()
        return lp.detach() * mask, torch.cat([p.grad.flatten() for p in model.parameters()])

    padded = pack([prompts[i // G] for i in range(len(completions))], completions, 0, "cpu")
    grouped = pack_groups(prompts, completions, G, 0, "cpu")
    want, want_grad = run(lambda: (completion_logprobs(model, padded, temperature), padded.completion_mask))
    got, got_grad = run(lambda: (grouped_logprobs(model, grouped, temperature), grouped.completion_mask))
    model.zero_grad(set_to_none=True)
    assert torch.equal(grouped.completion_mask, padded.completion_mask)
    assert (got - want).abs().max().item() < 1e-5
    assert ((got_grad - want_grad).norm() / want_grad.norm()).item() < 1e-5


def test_the_chunked_head_gives_the_same_values_with_chunks_of_one_row(tiny_policy, monkeypatch):
    """Chunks smaller than the batch (here one row each) change nothing: rows are independent."""
    model, _ = tiny_policy
    prompts, completions = _random_groups(model.config.vocab_size, 2, seed=2)
    batch = pack_groups(prompts, completions, 2, 0, "cpu")
    with torch.no_grad():
        whole = grouped_logprobs(model, batch, 1.0)
        monkeypatch.setattr("rapid_cli.policy.HEAD_CHUNK_BYTES", 1)
        rows = grouped_logprobs(model, batch, 1.0)
    assert (whole - rows).abs().max().item() < 1e-6


@pytest.mark.parametrize("algo", ALGOS)
def test_every_algorithm_takes_the_same_step_packed_or_padded(tiny_policy, algo):
    model, tok = tiny_policy
    state = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = compose(TINY + [f"algo={algo}", "algo.group_size=2", "algo.prompts_per_step=4", "algo.steps_per_generation=1",
                          "optimizer.max_grad_norm=null", "optimizer.lr=1e-3", "algo.packing=false"])
    ro = rollouts(cfg, model, tok)
    now = learner(cfg, model, tok).logprobs(ro)
    cfg.algo.packing = True
    assert (learner(cfg, model, tok).logprobs(ro) - now).abs().max().item() < 1e-5
    old = shifted(ro, now, 0.15)
    ref = shifted(ro, now, -0.3) if cfg.algo.kl_beta else None
    grads = {}
    try:
        for packing in (False, True):
            cfg.algo.packing = packing
            for micro in (2, 8):
                model.load_state_dict(state)
                grads[packing, micro] = raw_gradient(model, cfg, ro, old, ref, micro, tok)
            budget = learner(cfg, model, tok)._positions(ro, ro.group_slice(1, 2))  # by tokens: groups 1-2 fit
            model.load_state_dict(state)
            grads[packing, "tokens"] = raw_gradient(model, cfg, ro, old, ref, 8, tok, tokens=budget)
    finally:
        model.load_state_dict(state)
    want = grads[False, 8]
    assert want.norm() > 1e-3
    for key, got in grads.items():
        assert ((got - want).norm() / want.norm()).item() < 1e-5, (algo, key)
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-7), (algo, key)
