"""Which float type local models compute in: bf16 where the hardware multiplies it natively.

A GPU does; so do CPUs with AVX512_BF16 or AMX (recent Xeon and EPYC). Measured on this project's
2-core AMD EPYC (AVX512_BF16) with SmolLM2-135M: a DPO-sized training step (4 x 256 tokens) took
7.2-7.6 s in fp32 and 2.3-3.2 s under bf16 autocast; sampling 32 speeches x 80 tokens ran at
137-152 tokens/s in fp32 and 281-290 in bf16. A CPU without native bf16 emulates it, slower than
fp32 (on the project's AVX2-only EPYC: 21 tokens/s in bf16 against 77 in fp32), so there ``auto``
stays fp32.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.cache
def cpuinfo() -> str:
    """/proc/cpuinfo's text; "" off Linux or where it cannot be read."""
    if not sys.platform.startswith("linux"):
        return ""
    try:
        return Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def cpu_flags(text: str) -> set[str]:
    """The words of /proc/cpuinfo's ``flags`` lines (not ``bugs`` or others)."""
    return {word for line in text.splitlines() if line.startswith("flags") for word in line.split()}


@functools.cache
def cpu_has_bf16() -> bool:
    """True where this CPU multiplies bf16 in hardware (Linux: its /proc/cpuinfo flags)."""
    return native_bf16(cpuinfo())


def native_bf16(text: str) -> bool:
    """Whether /proc/cpuinfo's text lists a native bf16 flag on its ``flags`` lines."""
    flags = cpu_flags(text)
    return any(flag in flags for flag in NATIVE_BF16_FLAGS)


def auto_dtype(device: str) -> str:
    """``dtype: auto``'s choice on ``device``: bfloat16 on CUDA and on a CPU with native bf16,
    float32 elsewhere (other CPUs, mps)."""
    if device.startswith("cuda") or (device == "cpu" and cpu_has_bf16()):
        return "bfloat16"
    return "float32"


def train_bf16(choice: bool | None, on_cpu: bool) -> bool:
    """Whether a Trainer autocasts to bf16 (its master weights stay fp32): ``choice`` when set,
    else on a GPU, and on a CPU with native bf16."""
    if choice is not None:
        return choice
    return cpu_has_bf16() if on_cpu else True
