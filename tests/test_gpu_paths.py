"""GPU-only paths whose logic runs on a CPU: a GPU the driver shows but torch cannot use is refused (simulated
with a stand-in `nvidia-smi` on PATH, as on a machine whose driver is too old for torch's CUDA 13)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO, TINY

no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="a real GPU is visible")

OLD_DRIVER = """#!/bin/sh
case "$*" in
  *--query-gpu*) echo 535.104.05 ;;
  *) echo "| NVIDIA-SMI 535.104.05    Driver Version: 535.104.05    CUDA Version: 12.2 |" ;;
esac
"""


@pytest.fixture
def old_driver(tmp_path, monkeypatch):
    """PATH with an `nvidia-smi` that reports one GPU on driver 535 (CUDA 12.2): torch 2.13 (CUDA 13) cannot use it."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text(OLD_DRIVER)
    (bin_dir / "nvidia-smi").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return os.environ.copy()


@no_gpu
def test_device_auto_refuses_a_gpu_that_torch_cannot_use(old_driver):
    from rapid_cli.errors import RapidError
    from rapid_cli.policy import pick_device

    with pytest.raises(RapidError) as err:
        pick_device("auto")
    message = str(err.value)
    assert "\n" not in message
    for part in ("1 GPU(s)", "driver 535.104.05", "CUDA up to 12.2", f"torch {torch.__version__}", ">= 580",
                 "device=cpu"):
        assert part in message, message
    with pytest.raises(RapidError, match="driver 535.104.05"):
        pick_device("cuda")
    assert pick_device("cpu").type == "cpu"  # asked for knowingly


@no_gpu
def test_hidden_gpus_are_a_choice(old_driver, monkeypatch):
    from rapid_cli.policy import pick_device

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert pick_device("auto").type == "cpu"


@no_gpu
@pytest.mark.slow
def test_training_stops_with_one_line_before_anything_runs(old_driver, tmp_path):
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "rapid_cli", "train", *TINY, f"hydra.run.dir={run}"], cwd=REPO,
                          env={**old_driver, "WANDB_MODE": "disabled"}, capture_output=True, text=True, timeout=300)
    errors = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1, proc.stdout + proc.stderr
    assert "driver 535.104.05" in errors[0] and "cannot use them" in errors[0]
    assert not (run / "metrics.jsonl").exists()


@no_gpu
def test_doctor_names_the_driver(old_driver):
    proc = subprocess.run([sys.executable, "-m", "rapid_cli", "doctor", "--quick", "sampler=hf"], cwd=REPO,
                          env={**old_driver, "COLUMNS": "400"}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "driver 535.104.05" in proc.stdout and "error: 1 check(s) failed: gpu" in proc.stdout, proc.stdout


QWEN_1_5B = dict(num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2, hidden_size=1536,
                 max_position_embeddings=32768)  # Qwen2.5-1.5B's shape


def sampler_cfg(*overrides):
    from conftest import compose

    return compose(["sampler=vllm", *overrides]).sampler


def test_cuda_engine_defaults_graphs_on_and_a_kv_cache_for_one_round():
    from transformers import Qwen2Config

    from rapid_cli.samplers.vllm import GiB, engine_options, kv_bytes_per_token

    config = Qwen2Config(**QWEN_1_5B)
    assert kv_bytes_per_token(config, 2) == 2 * 28 * 2 * 128 * 2  # K and V, 28 layers, 2 KV heads of 128, bf16
    opts = engine_options(sampler_cfg(), True, config, 1_543_714_304, 2, sequences=128, gpu_total=80 * GiB)
    assert opts["enforce_eager"] is False
    kv = 128 * 2048 * 28672  # a round's 128 completions at max_model_len 2048: 7.0 GiB, not 30% of the card
    assert opts["kv_cache_memory_bytes"] == kv
    # vLLM's start-up check asks that this share of the card be free: weights + KV + overhead, ~0.2 of 80 GB
    assert opts["gpu_memory_utilization"] == pytest.approx((1_543_714_304 * 2 + kv + 4 * GiB) / (80 * GiB))
    assert 0.1 < opts["gpu_memory_utilization"] < 0.25
    big = engine_options(sampler_cfg("sampler.max_model_len=32768"), True, config, 1_543_714_304, 2, 512, 80 * GiB)
    assert big["kv_cache_memory_bytes"] == 16 * GiB  # capped
    forced = engine_options(sampler_cfg("sampler.enforce_eager=true", "sampler.gpu_memory_utilization=0.5"), True,
                            config, 1_543_714_304, 2, 128, 80 * GiB)
    assert forced == {"enforce_eager": True, "gpu_memory_utilization": 0.5}


def test_cpu_engine_defaults_are_unchanged():
    from transformers import Qwen2Config

    from rapid_cli.samplers.vllm import GiB, engine_options

    config = Qwen2Config(**QWEN_1_5B)
    assert engine_options(sampler_cfg(), False, config, 10, 4, 128, 0) == {
        "enforce_eager": True, "gpu_memory_utilization": 0.3}
    assert engine_options(sampler_cfg("sampler.kv_cache_gb=1"), False, config, 10, 4, 128, 0) == {
        "enforce_eager": True, "kv_cache_memory_bytes": GiB}


def test_the_gpu_preset_composes_and_passes_validation():
    from conftest import compose
    from rapid_cli.validation import validate, validate_training

    cfg = compose(["experiment=gpu"])
    validate(cfg)
    validate_training(cfg)
    assert (cfg.model.name, cfg.task.name, cfg.sampler.name, cfg.device) == ("qwen-0.5b", "math", "vllm", "cuda")
    assert cfg.sampler.enforce_eager is None and cfg.sampler.gpu_memory_utilization is None  # the CUDA defaults decide
