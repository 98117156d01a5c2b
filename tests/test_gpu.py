"""What only a CUDA GPU can show (docs/gpu.md): run with `make test-gpu` (= pytest -m gpu tests/test_gpu.py) on a
GPU machine after `rapid doctor`. Every test here is marked `gpu` and skipped where torch sees no CUDA device
(tests/conftest.py), so CI on CPU collects and skips them.

- sleep_between_rounds frees the KV cache's memory and the engine comes back with the trainer's weights;
- the bf16 engine (the CUDA default) stays close to the fp32-master trainer in log-probs (the gap is printed);
- CUDA defaults: a bf16 engine with CUDA graphs, not the CPU's eager fp32;
- a 1-rank NCCL FSDP run trains, syncs (stream_full_weights) and resumes;
- `perf/gpu_mem_peak_gb_max` is logged;
- QLoRA (lora=qlora) trains on a 4-bit base and the engine samples from that base.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO, TINY, compose
from rapid_cli.samplers.vllm import vllm_available

pytestmark = pytest.mark.gpu
needs_vllm = pytest.mark.skipif(not vllm_available(), reason="vLLM not installed")

GPU = [o for o in TINY if o != "sampler=hf"] + ["device=cuda", "sampler.max_model_len=256"]
TEXTS = ["What is 1 + 2?", "What is 7 + 5? Answer with just the number.", "Hi", "What is 9 * 9?"]


def vllm_engine(*overrides):
    from rapid_cli.plan import open_sampler
    from rapid_cli.policy import load_policy

    cfg = compose(GPU + ["sampler=vllm", *overrides])
    model, tok, path = load_policy(cfg.model, torch.device("cuda"))
    return cfg, model, tok, open_sampler(cfg, model, tok, path)


def prompts_of(tok):
    return [tok.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True,
                                    tokenize=True)["input_ids"]
            for t in TEXTS]


def greedy(sampler, prompts):
    from rapid_cli.types import SamplingParams

    return sampler.generate(prompts, SamplingParams(n=1, temperature=0, max_tokens=16))


def trainer_logprobs(model, tok, prompts, completions, bf16: bool):
    from rapid_cli.policy import completion_logprobs, pack

    batch = pack(prompts, completions, tok.pad_token_id, "cuda")
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
        lp = completion_logprobs(model, batch, 1.0)
    return [lp[i, : len(c)].float().cpu() for i, c in enumerate(completions)]


@needs_vllm
def test_cuda_defaults_bf16_engine_with_cuda_graphs_and_a_kv_cache_for_a_round():
    _, _, _, sampler = vllm_engine()
    try:
        engine = sampler.llm.llm_engine
        assert engine.model_config.dtype == torch.bfloat16
        assert engine.model_config.enforce_eager is False
        assert engine.vllm_config.cache_config.kv_cache_memory_bytes <= 16 * 2**30  # not a share of the card
    finally:
        sampler.close()


@needs_vllm
def test_sleep_frees_the_kv_cache_and_the_engine_wakes_with_the_trainers_weights():
    _, model, tok, sampler = vllm_engine("sampler.sleep_between_rounds=true", "sampler.kv_cache_gb=2",
                                         "sampler.dtype=float32")  # fp32 engine: log-probs comparable to 1e-3
    try:
        prompts = prompts_of(tok)
        greedy(sampler, prompts)
        torch.cuda.synchronize()
        free_awake = torch.cuda.mem_get_info()[0]
        sampler.release_memory()
        torch.cuda.synchronize()
        freed = torch.cuda.mem_get_info()[0] - free_awake
        assert freed > 1.5 * 2**30, f"sleep freed {freed / 2**30:.2f} GiB of a 2 GiB KV cache"
        torch.manual_seed(0)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
        sampler.sync_weights(model)  # wakes the KV cache first, then loads the new weights
        assert torch.cuda.mem_get_info()[0] < free_awake + 0.5 * 2**30  # the KV cache is mapped again
        out = greedy(sampler, prompts)  # the perturbed weights (stale ones would differ by far more than 1e-3)
        ours = trainer_logprobs(model, tok, prompts, out.completion_ids, bf16=False)
        assert max((a - torch.tensor(b)).abs().max().item() for a, b in zip(ours, out.logprobs, strict=True)) < 1e-3
    finally:
        sampler.close()


@needs_vllm
def test_bf16_engine_logprob_gap_to_the_trainer():
    """The CUDA default pairs a bf16 engine with an fp32-master trainer computing in bf16 autocast: their
    log-probs differ by rounding only. A sync that missed weights, or a wrong dtype, shows as a gap of
    order 1; algo.old_logprobs=auto measures the same gap every round and recomputes when it is too big."""
    _, model, tok, sampler = vllm_engine()
    try:
        prompts = prompts_of(tok)
        out = greedy(sampler, prompts)
        for bf16 in (True, False):
            ours = trainer_logprobs(model, tok, prompts, out.completion_ids, bf16)
            gaps = torch.cat([(a - torch.tensor(b)).abs() for a, b in zip(ours, out.logprobs, strict=True)])
            seq = max((a - torch.tensor(b)).sum().abs().item() for a, b in zip(ours, out.logprobs, strict=True))
            print(f"bf16 engine vs trainer ({'bf16 autocast' if bf16 else 'fp32'}): per-token mean {gaps.mean():.2e} "
                  f"max {gaps.max():.2e}, worst sequence log w {seq:.2e}")
            assert gaps.mean() < 0.05 and gaps.max() < 0.5
    finally:
        sampler.close()


def run_rapid(args: list[str], torchrun: int = 0, timeout: int = 900) -> subprocess.CompletedProcess:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={torchrun}"] \
        if torchrun else [sys.executable]
    return subprocess.run([*launcher, "-m", "rapid_cli", "train", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "WANDB_MODE": "disabled"})


def rows(run_dir) -> list[dict]:
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["round"] > 0]


@pytest.mark.parametrize("sampler", ["hf", pytest.param("vllm", marks=needs_vllm)])
def test_one_rank_nccl_fsdp_trains_and_resumes(tmp_path, sampler):
    run = tmp_path / "run"
    args = [*GPU, f"sampler={sampler}", "train.parallel=fsdp", "train.rounds=2", "train.save_every=1",
            f"hydra.run.dir={run}"]
    if sampler == "vllm":
        args.append("sampler.kv_cache_gb=1")
    proc = run_rapid(args, torchrun=1)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert [r["round"] for r in rows(run)] == [1, 2]
    resumed = run_rapid([a.replace("train.rounds=2", "train.rounds=3") for a in args] + ["train.resume=auto"],
                        torchrun=1)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert rows(run)[-1]["round"] == 3
    if sampler == "vllm":  # the engine took FSDP's streamed weights: its log-probs match the trainer's
        assert rows(run)[-1]["iw/sampler_logprob_gap_mean"] < 0.05


@pytest.mark.parametrize("sampler", ["hf", pytest.param("vllm", marks=needs_vllm)])
def test_qlora_trains_on_a_4bit_base_and_the_engine_samples_from_it(tmp_path, sampler):
    """lora=qlora on CUDA: bitsandbytes packs the base where it runs, the adapter trains, the checkpoint records the
    4-bit base, and the engine (handed the dequantized base plus the adapter) is the trainer's policy."""
    run = tmp_path / "run"
    args = [*GPU, f"sampler={sampler}", "lora=qlora", "lora.r=4", "train.rounds=2", "train.save_every=1",
            f"hydra.run.dir={run}"] + (["sampler.kv_cache_gb=1"] if sampler == "vllm" else [])
    proc = run_rapid(args)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert [r["round"] for r in rows(run)] == [1, 2]
    adapter = run / "checkpoints" / "round-000002" / "adapter"
    assert json.loads((adapter / "base_quantization.json").read_text()) == {"quantize": "nf4"}
    if sampler == "vllm":
        assert rows(run)[-1]["iw/sampler_logprob_gap_mean"] < 0.05


def test_peak_gpu_memory_is_a_perf_metric(tmp_path):
    proc = run_rapid([*GPU, "sampler=hf", f"hydra.run.dir={tmp_path}"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for r in rows(tmp_path):
        assert 0 < r["perf/gpu_mem_peak_gb_max"] < torch.cuda.get_device_properties(0).total_memory / 2**30
        assert r["perf/host_rss_peak_gb_max"] > 0
