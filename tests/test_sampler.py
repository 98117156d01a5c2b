"""The HF sampler: greedy tokens match transformers' own generate, logprobs match the trainer's."""

import dataclasses

import torch

from rapid_cli.policy import completion_logprobs, pack
from rapid_cli.samplers.hf import HFSampler
from rapid_cli.types import SamplingParams


def prompts_of(tok, texts):
    return [tok.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True,
                                    tokenize=True)["input_ids"] for t in texts]


def test_greedy_matches_transformers_generate(tiny_policy):
    model, tok = tiny_policy
    prompts = prompts_of(tok, ["What is 1 + 2?", "What is 7 + 5? Answer with just the number."])
    gens = HFSampler(model, tok, batch_size=8).generate(prompts, SamplingParams(n=1, temperature=0, max_tokens=10))
    for p, ids in zip(prompts, gens.completion_ids, strict=True):
        ref = model.generate(torch.tensor([p]), max_new_tokens=10, do_sample=False, eos_token_id=tok.eos_token_id,
                             pad_token_id=tok.pad_token_id)[0, len(p):].tolist()
        assert ids == ref[: len(ids)] and len(ids) == len(ref) - (ref[len(ids):].count(tok.pad_token_id))


def test_behaviour_logprobs_equal_recomputed_and_groups_are_contiguous(tiny_policy):
    model, tok = tiny_policy
    prompts = prompts_of(tok, ["What is 3 + 4?", "Hi", "What is 9 * 9?"])
    params = SamplingParams(n=3, temperature=0.8, max_tokens=12, seed=5)
    gens = HFSampler(model, tok, batch_size=4).generate(prompts, params)  # batches cross prompt groups
    assert len(gens) == 9 and set(gens.finish_reasons) <= {"stop", "length"}
    rows = [p for p in prompts for _ in range(3)]
    batch = pack(rows, gens.completion_ids, tok.pad_token_id, "cpu")
    with torch.no_grad():
        lp = completion_logprobs(model, batch, 0.8)
    for i, (ids, blp) in enumerate(zip(gens.completion_ids, gens.logprobs, strict=True)):
        assert len(ids) == len(blp) >= 1
        assert torch.allclose(lp[i, : len(ids)], torch.tensor(blp), atol=1e-4)
        assert gens.finish_reasons[i] == ("stop" if ids[-1] == tok.eos_token_id else "length")
        assert gens.finish_reasons[i] == "stop" or len(ids) == 12
    # same seed, same samples
    again = HFSampler(model, tok, batch_size=4).generate(prompts, params)
    assert again.completion_ids == gens.completion_ids


def test_sync_takes_plain_weights_one_at_a_time_and_refuses_a_partial_set(tiny_policy):
    """A sampler with its own copy (FSDP shards the trainer's) follows a stream of (name, tensor) pairs;
    the trainer's own model object stays as it is; a stream that misses a weight is refused, not half-applied
    silently."""
    import copy

    import pytest

    model, tok = tiny_policy
    trained = copy.deepcopy(model)
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(0.01)
    own = HFSampler(copy.deepcopy(model), tok)
    own.sync_weights(x for x in trained.state_dict().items())  # a generator, as Learner.full_weights() is
    for name, value in trained.state_dict().items():
        assert torch.equal(own.model.state_dict()[name], value), name
    shared = HFSampler(model, tok)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    shared.sync_weights(model.state_dict().items())  # its own tensors: nothing to copy
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    partial = list(trained.state_dict().items())[:-1]
    with pytest.raises(KeyError, match="no new value for 1 weights"):
        HFSampler(copy.deepcopy(model), tok).sync_weights(partial)


def test_generation_stops_at_a_stop_string_with_its_text_cut_before_it(tiny_policy):
    """`task.stop` (lm-eval's `until` for GSM8K: "Question:"): a few-shot prompt's completion that goes on to write
    the next question was sampled to max_tokens, at the cost of every token after the answer. The rows that
    meet a stop string end with the token that completes it, their text before it, finish reason "stop"; the
    others are the completions sampled without stop strings."""
    from conftest import stopped_at

    model, tok = tiny_policy
    prompts = prompts_of(tok, ["What is 3 + 4?", "Hi", "What is 9 * 9?"])
    params = SamplingParams(n=2, temperature=0.8, max_tokens=24, seed=3)
    free = HFSampler(model, tok, batch_size=4).generate(prompts, params)
    # stop strings taken from the middle of two completions' text, so some rows meet them and some may not
    stops = [tok.decode(free.completion_ids[0][8:10]).strip()[:3], tok.decode(free.completion_ids[3][12:13]).strip()]
    assert all(stops), stops
    cut = HFSampler(model, tok, batch_size=4).generate(prompts, dataclasses.replace(params, stop=tuple(stops)))
    met = 0
    for i, ids in enumerate(free.completion_ids):
        expected = stopped_at(tok, ids, stops)
        if expected is None:
            assert cut.completion_ids[i] == ids and cut.texts[i] == free.texts[i]
            assert cut.finish_reasons[i] == free.finish_reasons[i]
            continue
        met += 1
        assert (cut.completion_ids[i], cut.texts[i], cut.finish_reasons[i]) == (*expected, "stop")
        assert cut.logprobs[i] == free.logprobs[i][: len(expected[0])]
    assert met >= 2
