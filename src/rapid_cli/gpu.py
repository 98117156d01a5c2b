"""What the NVIDIA driver sees, independently of torch, so that a GPU torch cannot use is an error rather than
a silent fall-back to the CPU.

torch 2.13 and vLLM 0.32 on PyPI are CUDA 13 builds, which need driver >= 580. With an older driver
`torch.cuda.is_available()` is simply False: left alone, `device=auto` would train on the host CPU while
the GPU sits idle. `nvidia-smi` ships with the driver, so it answers whether a GPU is there at all.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass

import torch

from rapid_cli.errors import RapidError


@dataclass(frozen=True)
class DriverView:
    gpus: int = 0  # GPUs nvidia-smi lists (0: no driver, or none)
    driver: str | None = None  # e.g. "535.104.05"
    cuda: str | None = None  # the newest CUDA this driver supports, from nvidia-smi's header


def _run(args: list[str]) -> str:
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout if out.returncode == 0 else ""


def nvidia_smi() -> DriverView:
    """GPUs, driver version and its CUDA version as nvidia-smi reports them; DriverView() without one."""
    if not shutil.which("nvidia-smi"):
        return DriverView()
    rows = [r.strip() for r in _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]).splitlines()
            if r.strip()]
    if not rows:
        return DriverView()
    cuda = re.search(r"CUDA Version:\s*([\d.]+)", _run(["nvidia-smi"]))
    return DriverView(len(rows), rows[0], cuda.group(1) if cuda else None)


def torch_cuda_error() -> str:
    """Why torch cannot use CUDA, in torch's words (first line)."""
    try:
        torch.cuda.init()
    except Exception as err:  # torch raises RuntimeError/AssertionError/AcceleratorError by cause
        return (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
    return "torch.cuda.is_available() is False"


def unusable_gpu_message(view: DriverView) -> str:
    """One line for a GPU the driver shows but torch cannot use, naming both sides' versions and the fix."""
    built = f"CUDA {torch.version.cuda}" if torch.version.cuda else "no CUDA (a CPU build)"
    driver = f"driver {view.driver}" + (f", which supports CUDA up to {view.cuda}" if view.cuda else "")
    return (f"nvidia-smi sees {view.gpus} GPU(s) ({driver}) but torch {torch.__version__} (built for {built}) cannot "
            f"use them: {torch_cuda_error()}; install NVIDIA driver >= 580 (CUDA 13) or a torch build for your "
            "driver's CUDA, check CUDA_VISIBLE_DEVICES, or train on the CPU knowingly with device=cpu")


def hidden_on_purpose() -> bool:
    """CUDA_VISIBLE_DEVICES set to nothing (or -1): the user hid the GPUs from this process."""
    import os

    return os.environ.get("CUDA_VISIBLE_DEVICES", "x").strip() in ("", "-1")


def check_cuda_usable() -> None:
    """Raises when a GPU is visible to the driver but not to torch (device=auto would quietly pick the CPU)."""
    if torch.cuda.is_available() or hidden_on_purpose():
        return
    view = nvidia_smi()
    if view.gpus:
        raise RapidError(unusable_gpu_message(view))


def peak_memory(device: torch.device) -> dict[str, float]:
    """This process's memory high-water marks, in GiB, keyed for the `perf/` metrics (`_max`: the maximum over
    ranks). `gpu_mem_peak_gb_max`: the most memory PyTorch's allocator held on the device during the round
    (the trainer and the in-process vLLM engine alike; not the CUDA context or NCCL's buffers), reset for the
    next round; absent on the CPU. `host_rss_peak_gb_max`: the process's peak resident memory since it started
    (the kernel's ru_maxrss, which cannot be reset)."""
    import resource

    out = {"perf/host_rss_peak_gb_max": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}  # KiB on Linux
    if device.type == "cuda":
        out["perf/gpu_mem_peak_gb_max"] = torch.cuda.max_memory_allocated(device) / 2**30
        torch.cuda.reset_peak_memory_stats(device)
    return out
