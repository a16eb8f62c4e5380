"""What every `make bench` script writes (issue 14): ``benchmarks/results/<name>.json`` holding
``name``, ``value``, ``unit``, ``goal``, ``met`` and ``details``, with the machine it ran on."""

from __future__ import annotations

import json
import os
import platform
from importlib.metadata import version
from pathlib import Path
from typing import Any


def machine(packages: tuple[str, ...] = ("torch", "transformers"), **extra: Any) -> dict[str, Any]:
    """The machine and versions, and the 1-minute load average now: call it before the work, so
    that it is other jobs' load (> 0.5: another job shared the cores). ``cpu_native_bf16``: local
    models compute in bf16 by default (psychocounsel/precision.py)."""
    from psychocounsel.precision import cpu_has_bf16

    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        **{name: version(name) for name in packages},
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_native_bf16": cpu_has_bf16(),
        "load_avg_1m_before": os.getloadavg()[0],
        **extra,
    }


def cpu_model() -> str:
    """The CPU's model name and its widest vector flags (results differ ~2x between an AVX2-only
    and an AVX-512 host of the same two cores; see docs/benchmarks.md)."""
    from psychocounsel.precision import cpu_flags, cpuinfo

    text = cpuinfo()
    lines = text.splitlines()
    name = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), None)
    name = name or platform.processor() or "unknown"
    flags = cpu_flags(text)
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
    return f"{name} ({' '.join(f for f in wanted if f in flags) or 'no AVX2'})"


def write_result(out: Path, name: str, value: Any, unit: str, goal: str, met: bool, details: dict) -> None:
    report = {"name": name, "value": value, "unit": unit, "goal": goal, "met": bool(met), "details": details}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
