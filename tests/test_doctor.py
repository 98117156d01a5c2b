"""`rapid doctor` passes on a working machine (here: CPU, both samplers) and fails, naming the check, when a
part is broken."""

from __future__ import annotations

import os
import subprocess

import pytest

from conftest import RAPID, REPO
from rapid_cli.samplers.vllm import vllm_available


def doctor(*args):
    return subprocess.run([RAPID, "doctor", *args], cwd=REPO, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "COLUMNS": "200"})


@pytest.mark.slow
@pytest.mark.parametrize("sampler", ["hf", pytest.param("vllm", marks=[pytest.mark.vllm, pytest.mark.skipif(
    not vllm_available(), reason="vLLM not installed")])])
def test_doctor_passes_here(sampler):
    proc = doctor(f"sampler={sampler}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for row in ("python", "torch", "gpu", "vllm", "qlora", "sandbox", "disk (cache)", "one RAPID round", "weight sync"):
        assert f"│ {row}" in proc.stdout, proc.stdout
    assert "FAIL" not in proc.stdout and "all checks passed" in proc.stdout
    if sampler == "vllm":
        assert "greedy tokens equal the trainer's after a sync" in proc.stdout


def test_doctor_fails_on_a_broken_sandbox():
    proc = doctor("--quick", "reward.memory_mb=8")  # too little memory for Python itself to start in the jail
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "│ sandbox" in proc.stdout and "FAIL" in proc.stdout
    assert "error: 1 check(s) failed: sandbox" in proc.stdout


def test_doctor_refuses_cuda_without_a_gpu():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    proc = doctor("--quick", "device=cuda")
    assert proc.returncode == 1 and "gpu" in proc.stdout.split("error:")[1], proc.stdout


def test_doctor_says_whether_the_hub_is_reachable_and_what_needs_it():
    # a closed local port stands for an unreachable hub, wherever the tests run
    env = {**os.environ, "COLUMNS": "400", "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "0"}
    proc = subprocess.run([RAPID, "doctor", "--quick"], cwd=REPO, capture_output=True, text=True, timeout=900, env=env)
    row = next((ln for ln in proc.stdout.splitlines() if ln.startswith("│ hub")), "")
    assert "warn" in row and "not reachable" in row, proc.stdout
    assert "model=llama-1b, qwen-0.5b-instruct, qwen-0.5b, qwen-1.5b and task=mbpp need it" in row
    assert "warnings: " in proc.stdout and "hub" in proc.stdout.splitlines()[-1]
    row = next((ln for ln in proc.stdout.splitlines() if ln.startswith("│ bf16")), "")
    assert ("fast on the CPU" in row) == (("amx_bf16" in open("/proc/cpuinfo").read()) or
                                          ("avx512_bf16" in open("/proc/cpuinfo").read())), row
