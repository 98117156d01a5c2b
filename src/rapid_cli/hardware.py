"""Whether this machine computes bf16 fast, which decides what `train.mixed_precision=auto` and
`sampler.dtype=auto` pick.

On a CPU, torch's bf16 matrix products go through oneDNN's AMX or AVX512-BF16 kernels where the CPU reports
those units; on this project's Xeon they run 4-7x faster than fp32 at a 135M model's shapes. Without them bf16
is emulated in fp32 registers and is slower than fp32 itself, so bf16 is only chosen (or allowed) where the
flags are present. Other architectures' bf16 paths (Arm's BF16 extension, Apple silicon) have not been measured
by us and are treated as without.
"""

from __future__ import annotations

from pathlib import Path

import torch

CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
CPUINFO = Path("/proc/cpuinfo")


def cpu_flags(cpuinfo: Path | None = None) -> set[str]:
    """The feature flags of the first CPU in `cpuinfo` (default CPUINFO, Linux's /proc/cpuinfo format); empty where
    unreadable (other systems)."""
    try:
        text = (cpuinfo or CPUINFO).read_text(errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def fast_bf16(cuda: bool, cpuinfo: Path | None = None) -> bool:
    """True on a CUDA GPU with native bf16 (compute capability >= 8.0) and on a CPU with AMX-BF16 or AVX512-BF16."""
    if cuda:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return bool(cpu_flags(cpuinfo) & set(CPU_BF16_FLAGS))


def bf16_units(cuda: bool, cpuinfo: Path | None = None) -> str:
    """What provides (or lacks) bf16 here, for messages: 'amx_bf16, avx512_bf16', 'the GPU', ..."""
    if cuda:
        return "the GPU" if fast_bf16(True) else "no native bf16 on this GPU (compute capability < 8.0)"
    found = sorted(cpu_flags(cpuinfo) & set(CPU_BF16_FLAGS))
    return ", ".join(found) if found else f"none of {' or '.join(CPU_BF16_FLAGS)} in {cpuinfo or CPUINFO}"
