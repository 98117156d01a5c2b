"""The measuring scripts: bench_update.py's FLOP count (checked by hand on the tiny model, not timed),
gpu_memory.py's LoRA count against peft's, and gpu_smoke.sh run on the CPU as CI runs it."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO


def script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_memory_estimate_counts_the_adapters_peft_injects():
    """gpu_memory.py's LoRA rows rest on its adapter count: peft's all-linear at rank 16 on the smallest preset's
    shape (built on the meta device) trains exactly that many parameters, and LoRA's trainer holds less."""
    from transformers import AutoModelForCausalLM

    from rapid_cli.config import compose_config
    from rapid_cli.lora import add_adapters

    gpu_memory = script("gpu_memory")
    shape = gpu_memory.SHAPES["smollm2-135m"]
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(shape)
    expect = gpu_memory.adapter_params(model, 16)
    add_adapters(model, compose_config(["lora=default", "lora.r=16"]).lora)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == expect == 4_884_480
    e = gpu_memory.estimate(shape, compose_config(["sampler=vllm"]).sampler, 16)
    assert e["adapters"] == expect and e["lora_trainer"] == 2 * e["params"] + 16 * expect < e["trainer"] / 6
    assert e["total"] - e["lora_total"] == e["trainer"] - e["lora_trainer"]


def test_update_flops_of_the_tiny_model_by_hand(tiny_policy):
    update_flops = script("bench_update").update_flops
    c = tiny_policy[0].config
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads, c.intermediate_size,
            c.vocab_size) == (128, 2, 2, 2, 256, 410), "the tiny preset changed: redo the numbers below"
    # head_dim 64. A layer: q, k, v, o 4 x 128 x 128 = 65536, MLP 3 x 128 x 256 = 98304: 163840, x 2 layers
    # = 327680. Head: 128 x 410 = 52480. Attention: 4 x 2 heads x 64 x 2 layers = 1024 a (query, key) pair.
    # One group, prompt 3, G=2 completions of 2 and 1: 6 tokens (the prompt once), 3 completion tokens;
    # pairs: prompt 1+2+3 = 6, completion of 2: 4+5 = 9, completion of 1: 4, so 19.
    # forward 2 x (327680 x 6 + 52480 x 3) + 1024 x 19 = 4247040 + 19456; the step three times that.
    assert update_flops(c, [3], [2, 1], 2) == (4266496, 12799488)
    assert script("bench_update").forward_flops(c, [3], [2, 1], 2) == (4247040, 19456)  # weights, attention
    # Two groups: prompts 2 and 5, completions (0, 3) and (1, 1): 12 tokens, 5 completion tokens; pairs
    # 3 + 0 + (3+4+5) and 15 + 6 + 6: 42. 2 x (327680 x 12 + 52480 x 5) + 1024 x 42 = 8389120 + 43008.
    assert update_flops(c, [2, 5], [0, 3, 1, 1], 2) == (8432128, 25296384)
    with pytest.raises(ValueError, match="3 completions for 2 groups of 2"):
        update_flops(c, [2, 5], [1, 2, 3], 2)


def test_gpu_smoke_refuses_an_unknown_device():
    proc = subprocess.run(["bash", "scripts/gpu_smoke.sh", "--device", "tpu"], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "--device must be cuda or cpu" in proc.stderr


@pytest.mark.slow
def test_gpu_smoke_script_passes_on_the_cpu():
    """The CUDA smoke checks in their CPU mode: every check that does not need CUDA passes; bf16 autocast is
    skipped with its reason on a CPU without bf16 units (and must pass on one with them)."""
    from rapid_cli.hardware import fast_bf16

    proc = subprocess.run(["bash", "scripts/gpu_smoke.sh", "--device", "cpu"], cwd=REPO, capture_output=True,
                          text=True, timeout=900, env={**os.environ, "PYTHON": sys.executable})
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    verdicts = {line.split()[1].rstrip(":"): line.split()[0] for line in proc.stdout.splitlines()
                if line.split()[:1] in (["PASS"], ["FAIL"], ["SKIP"])}
    checks = ["cli", "tiny-train", "hf-sampler", "bf16-autocast", "packed-attention", "fsdp", "memory-metrics"]
    expected = {name: "PASS" for name in checks}
    if not fast_bf16(False):
        expected["bf16-autocast"] = "SKIP"
        assert "SKIP bf16-autocast: no fast bf16 on this CPU" in proc.stdout
    assert verdicts == expected, proc.stdout
    assert "all checks passed or skipped" in proc.stdout


def test_bench_attention_counts_the_pairs_the_mask_keeps_by_hand():
    kept = script("bench_attention").kept_pairs
    # prompt 3: 1+2+3 = 6; a completion of 2 behind it: 4+5 = 9, of 1: 4 (bench_update's count above)
    assert kept([3], [2, 1], 2) == 19
    assert kept([2, 5], [0, 3, 1, 1], 2) == 3 + 12 + 15 + 6 + 6


@pytest.mark.slow
def test_bench_attention_runs_on_the_tiny_model():
    """One repeat over one micro-batch per shape: both paths timed, their log-probs checked equal."""
    proc = subprocess.run([sys.executable, "scripts/bench_attention.py", "--groups", "2", "--repeats", "1", "--",
                           "model=tiny"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    for shape in ("gsm8k G=4", "gsm8k G=8"):
        assert shape in proc.stdout
    assert proc.stdout.count("segmented/64") == 6, proc.stdout  # the pairs line and 2 passes, per shape


@pytest.mark.slow
def test_profile_update_sorts_a_real_step_into_kinds_of_work():
    """The profiled step of each attention on the tiny model: every kind listed, the matmul's rate beside the
    peak measured in the run, and the kinds' shares adding up to the ops' time."""
    proc = subprocess.run([sys.executable, "scripts/profile_update.py", "--shape", "demo", "--", "model=tiny"],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    for attention in ("dense", "segments"):
        report = proc.stdout.split(f"\n{attention}: ")[1].split("top ")[0]
        shares = [float(line.split("%")[0].split()[-1]) for line in report.splitlines()[1:8]]
        assert abs(sum(shares) - 100) < 0.5, report
        assert "of peak" in report.splitlines()[1] and report.splitlines()[1].split()[0] == "matmul", report
    assert "_SegmentAttention" in proc.stdout.split("\nsegments: ")[1]  # the segments path did run
