"""The packed update path (algo.packing: each prompt encoded once, completions without padding, the LM
head over completion tokens only, a chunk at a time) computes what the padded path computes: the same
log-probs and, for every algorithm, the same raw gradient of a real learner step."""

from __future__ import annotations

import pytest
import torch

from conftest import TINY, compose
from rapid_cli.policy import (
    completion_logprobs,
    grouped_logprobs,
    pack,
    pack_groups,
    pack_segments,
    segmented_logprobs,
)
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


def test_under_bf16_autocast_the_chunked_head_casts_its_weight_once_per_pass(tiny_policy, monkeypatch):
    """The head's [vocab, hidden] weight is cast to bf16 once in the forward and once in the backward, not
    once per chunk of rows (on SmolLM2-135M at the GSM8K G=8 shape that was 54 casts of 28M values a step);
    the values and gradients are those of one chunk over every row, up to bf16 rounding."""
    from torch.utils._python_dispatch import TorchDispatchMode

    model, _ = tiny_policy
    head = model.get_output_embeddings().weight

    class Casts(TorchDispatchMode):
        count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func in (torch.ops.aten._to_copy.default, torch.ops.aten.copy_.default) and \
                    isinstance(out, torch.Tensor) and out.numel() == head.numel() and out.dtype == torch.bfloat16:
                Casts.count += 1
            return out

    prompts, completions = _random_groups(model.config.vocab_size, 4, seed=1)
    batch = pack_groups(prompts, completions, 4, 0, "cpu")
    weights = torch.linspace(-1, 1, batch.completion_mask.numel()).view_as(batch.completion_mask)
    results = []
    for chunk_bytes in (1 << 40, 1):  # every row in one chunk; one row per chunk
        monkeypatch.setattr("rapid_cli.policy.HEAD_CHUNK_BYTES", chunk_bytes)
        model.zero_grad(set_to_none=True)
        Casts.count = 0
        with torch.autocast("cpu", dtype=torch.bfloat16), Casts():
            lp = grouped_logprobs(model, batch, 1.0)
            (lp * weights).sum().backward()
        assert Casts.count <= 2, (chunk_bytes, Casts.count)
        results.append((lp.detach(), torch.cat([p.grad.flatten() for p in model.parameters()])))
    model.zero_grad(set_to_none=True)
    (want, want_grad), (got, got_grad) = results
    assert int(batch.completion_mask.sum()) > 10  # several chunks in the second pass
    assert (got - want).abs().max().item() < 0.02
    assert ((got_grad - want_grad).norm() / want_grad.norm()).item() < 0.02


LAYOUTS = {"padded": ["algo.packing=false"], "dense": ["algo.packed_attention=dense"],
           "segments": ["algo.packed_attention=segments"]}


@pytest.mark.parametrize("algo", ALGOS)
def test_every_algorithm_takes_the_same_step_packed_or_padded(tiny_policy, algo, monkeypatch):
    """The three layouts the Learner can take (padded rows; packed with the dense mask; packed with the
    segmented attention, chunks of 3 queries so completions span several) give the same log-probs and the
    same raw gradient, by rows and by tokens."""
    monkeypatch.setattr("rapid_cli.policy.SEGMENT_CHUNK", 3)
    model, tok = tiny_policy
    state = {k: v.clone() for k, v in model.state_dict().items()}
    base = TINY + [f"algo={algo}", "algo.group_size=2", "algo.prompts_per_step=4", "algo.steps_per_generation=1",
                   "optimizer.max_grad_norm=null", "optimizer.lr=1e-3"]
    cfgs = {name: compose(base + extra) for name, extra in LAYOUTS.items()}
    ro = rollouts(cfgs["padded"], model, tok)
    assert max(map(len, ro.generations.completion_ids)) > 2 * 3  # several chunks
    now = learner(cfgs["padded"], model, tok).logprobs(ro)
    for name in ("dense", "segments"):
        assert (learner(cfgs[name], model, tok).logprobs(ro) - now).abs().max().item() < 1e-5, name
    old = shifted(ro, now, 0.15)
    ref = shifted(ro, now, -0.3) if cfgs["padded"].algo.kl_beta else None
    grads = {}
    try:
        for name, cfg in cfgs.items():
            for micro in (2, 8):
                model.load_state_dict(state)
                grads[name, micro] = raw_gradient(model, cfg, ro, old, ref, micro, tok)
            budget = learner(cfg, model, tok)._positions(ro, ro.group_slice(1, 2))  # by tokens: groups 1-2 fit
            model.load_state_dict(state)
            grads[name, "tokens"] = raw_gradient(model, cfg, ro, old, ref, 8, tok, tokens=budget)
    finally:
        model.load_state_dict(state)
    want = grads["padded", 8]
    assert want.norm() > 1e-3
    for key, got in grads.items():
        assert ((got - want).norm() / want.norm()).item() < 1e-5, (algo, key)
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-7), (algo, key)


# The segmented attention (pack_segments + segmented_logprobs): the packed rows, but each prompt's queries and
# each completion's (a chunk at a time) attend over gathered keys instead of every pair under a dense mask.


def _padded_and_segmented(model, prompts, completions, G, temperature, chunk, weights=None):
    """(log-probs, raw gradient) of the padded path and of the segmented one on the same rows."""
    C = max(1, max(len(c) for c in completions))
    if weights is None:
        weights = torch.linspace(-1, 1, len(completions) * C).view(len(completions), C)

    def run(forward):
        model.zero_grad(set_to_none=True)
        lp, mask = forward()
        (lp * mask * weights).sum().backward()
        grads = [p.grad.flatten() for p in model.parameters() if p.requires_grad]
        return lp.detach() * mask, torch.cat(grads)

    padded = pack([prompts[i // G] for i in range(len(completions))], completions, 0, "cpu")
    segmented = pack_segments(prompts, completions, G, 0, "cpu", chunk=chunk)
    try:
        want = run(lambda: (completion_logprobs(model, padded, temperature), padded.completion_mask))
        got = run(lambda: (segmented_logprobs(model, segmented, temperature), segmented.completion_mask))
    finally:
        model.zero_grad(set_to_none=True)
    assert torch.equal(segmented.completion_mask, padded.completion_mask)
    return want, got


def _assert_equal(want, got):
    (lp, grad), (lp2, grad2) = want, got
    assert grad.norm() > 1e-3
    assert (lp2 - lp).abs().max().item() < 1e-5
    assert ((grad2 - grad).norm() / grad.norm()).item() < 1e-5


@pytest.mark.parametrize(("G", "chunk", "temperature"), [(4, 64, 1.0), (4, 3, 0.6), (1, 2, 1.0), (2, 1, 0.6)])
def test_segmented_logprobs_and_their_gradients_equal_the_padded_ones(tiny_policy, G, chunk, temperature):
    """Uneven prompts (7, 12, 3 tokens), completions of 0-9 tokens (one empty), G=1 too; chunks of 1-3 queries
    split completions into several buckets, 64 leaves each in one."""
    model, _ = tiny_policy
    prompts, completions = _random_groups(model.config.vocab_size, G, seed=G + chunk)
    _assert_equal(*_padded_and_segmented(model, prompts, completions, G, temperature, chunk))
    assert model.config._attn_implementation == "sdpa"  # the switch is for the call only


def test_segmented_logprobs_of_a_group_whose_completions_are_all_empty(tiny_policy):
    model, _ = tiny_policy
    prompts = [[5, 6, 7, 8], [9, 10], [11, 12, 13]]
    completions = [[14, 15, 16], [], [], [], [17], [18, 19, 20, 21, 22]]
    _assert_equal(*_padded_and_segmented(model, prompts, completions, 2, 1.0, chunk=2))


def test_segmented_logprobs_without_gradient_equal_the_dense_packed_ones(tiny_policy):
    """The pi_old pass: no autograd graph is built, the values are the dense path's."""
    model, _ = tiny_policy
    prompts, completions = _random_groups(model.config.vocab_size, 4, seed=3)
    with torch.no_grad():
        want = grouped_logprobs(model, pack_groups(prompts, completions, 4, 0, "cpu"), 1.0)
        got = segmented_logprobs(model, pack_segments(prompts, completions, 4, 0, "cpu", chunk=4), 1.0)
    assert not got.requires_grad
    assert (got - want).abs().max().item() < 1e-5


def test_the_segment_plan_computes_every_query_once_and_fewer_pairs_than_the_dense_mask():
    from rapid_cli.policy import segment_plan

    prompts = [[1] * 7, [1] * 12, [1] * 3]
    completions = [[2] * n for n in (9, 0, 5, 1, 8, 8, 2, 7, 6, 3, 9, 4)]
    batch = pack_segments(prompts, completions, 4, 0, "cpu", chunk=4)
    R, L = batch.input_ids.shape
    queries = torch.cat([b.q_index for b in batch.plan.buckets])
    real = queries[queries < R * L]
    assert torch.equal(real.sort().values, torch.nonzero(batch.segment.flatten() != -2).squeeze(1))
    assert batch.plan.pairs() < R * L * L / 2
    assert segment_plan(batch.segment, chunk=100).pairs() > batch.plan.pairs()  # smaller chunks, fewer pairs


def test_segmented_logprobs_of_a_lora_model_equal_the_padded_ones():
    from rapid_cli.policy import load_policy

    cfg = compose(TINY + ["lora.enabled=true", "lora.r=4"])
    model, _, _ = load_policy(cfg.model, torch.device("cpu"), lora_cfg=cfg.lora)
    for name, p in model.named_parameters():  # B starts at 0: give the adapters a value to differentiate through
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)
    prompts, completions = _random_groups(model.config.vocab_size, 2, seed=5)
    want, got = _padded_and_segmented(model, prompts, completions, 2, 1.0, chunk=3)
    assert got[1].numel() < sum(p.numel() for p in model.parameters())  # the adapters' gradient only
    _assert_equal(want, got)


def test_under_gradient_checkpointing_the_segmented_path_takes_the_dense_mask(tiny_policy):
    """The layers' recomputation in the backward pass runs after the attention switch is undone, so the
    segmented call falls back to the dense mask there: still exact."""
    import copy

    model = copy.deepcopy(tiny_policy[0])
    model.gradient_checkpointing_enable()
    model.train()
    prompts, completions = _random_groups(model.config.vocab_size, 4, seed=6)
    _assert_equal(*_padded_and_segmented(model, prompts, completions, 4, 1.0, chunk=3))


def test_segmented_logprobs_under_bf16_autocast_stay_near_the_dense_ones(tiny_policy):
    """bf16: the two paths round differently; per token within 0.05 of each other (a mask that let a group's
    completions see each other moves them by ~0.5), and gradients within 5% (relative norm)."""
    model, _ = tiny_policy
    prompts, completions = _random_groups(model.config.vocab_size, 4, seed=7)
    results = []
    for forward in (lambda: grouped_logprobs(model, pack_groups(prompts, completions, 4, 0, "cpu"), 1.0),
                    lambda: segmented_logprobs(model, pack_segments(prompts, completions, 4, 0, "cpu", chunk=3), 1.0)):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            lp = forward()
            lp.sum().backward()
        results.append((lp.detach(), torch.cat([p.grad.flatten() for p in model.parameters()])))
    model.zero_grad(set_to_none=True)
    (want, want_grad), (got, got_grad) = results
    assert (got - want).abs().max().item() < 0.05
    assert ((got_grad - want_grad).norm() / want_grad.norm()).item() < 0.05


DISTRIBUTED = """
import os, sys, torch, torch.distributed as dist
sys.path[:0] = [{tests!r}]
from conftest import TINY, compose
from rapid_cli.policy import completion_logprobs, load_policy, pack, pack_segments, segmented_logprobs
from test_packing import _random_groups
dist.init_process_group("gloo", init_method="tcp://127.0.0.1:{port}", rank=0, world_size=1)
cfg = compose(TINY)
model, _, _ = load_policy(cfg.model, torch.device("cpu"))
if {parallel!r} == "ddp":
    model = torch.nn.parallel.DistributedDataParallel(model)
else:
    from torch.distributed.fsdp import fully_shard
    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model)
prompts, completions = _random_groups(410, 4, seed=8)
padded = pack([prompts[i // 4] for i in range(len(completions))], completions, 0, "cpu")
segmented = pack_segments(prompts, completions, 4, 0, "cpu", chunk=3)
out = []
for lp, mask in ((completion_logprobs(model, padded, 1.0), padded.completion_mask),
                 (segmented_logprobs(model, segmented, 1.0), segmented.completion_mask)):
    model.zero_grad(set_to_none=True)
    (lp * mask).sum().backward()
    grads = [p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad for p in model.parameters()]
    out.append((lp.detach() * mask, torch.cat([g.flatten() for g in grads])))
(want, want_grad), (got, got_grad) = out
print("GAP", (got - want).abs().max().item(), ((got_grad - want_grad).norm() / want_grad.norm()).item())
dist.destroy_process_group()
"""


@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_segmented_logprobs_through_ddp_and_fsdp2_equal_the_padded_ones(parallel):
    """The model called through its DDP / FSDP2 wrapper (one process, gloo): hooks run, values are exact."""
    import socket
    import subprocess
    import sys

    from conftest import REPO

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = DISTRIBUTED.format(tests=str(REPO / "tests"), port=port, parallel=parallel)
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    gap, grad_gap = (float(x) for x in proc.stdout.split("GAP")[1].split())
    assert gap < 1e-5 and grad_gap < 1e-5, proc.stdout


def test_auto_attention_is_the_segmented_one_except_under_gradient_checkpointing(tiny_policy):
    model, tok = tiny_policy
    cfg = compose(TINY)
    assert cfg.algo.packing and cfg.algo.packed_attention == "auto"
    assert learner(cfg, model, tok).attention == "segments"
    model.gradient_checkpointing_enable()
    try:
        assert learner(cfg, model, tok).attention == "dense"  # the recomputed forward would not see the plan
    finally:
        model.gradient_checkpointing_disable()
    assert learner(compose(TINY + ["algo.packed_attention=dense"]), model, tok).attention == "dense"


@pytest.mark.parametrize("overrides, key", [
    (["algo.packed_attention=segments", "model.gradient_checkpointing=true"], "model.gradient_checkpointing"),
    (["algo.packed_attention=segments", "algo.packing=false"], "algo.packing"),
])
def test_segmented_attention_where_it_cannot_run_is_refused_at_start(overrides, key):
    from rapid_cli.errors import RapidError
    from rapid_cli.validation import validate

    with pytest.raises(RapidError, match=key):
        validate(compose(TINY + overrides))
