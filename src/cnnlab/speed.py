"""CPU facts that decide speed settings: native bf16 support and the autocast context to use."""

from __future__ import annotations

import contextlib
import functools
import platform
from pathlib import Path
from typing import ContextManager

import torch

from cnnlab.errors import CnnlabError

NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.lru_cache(maxsize=None)
def _cpuinfo(field: str) -> str:
    """Return the first value of ``field`` in /proc/cpuinfo ("" where it or the file is missing)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    for line in text.splitlines():
        if line.split(":", 1)[0].strip() == field:
            return line.split(":", 1)[1].strip()
    return ""


def cpu_flags() -> frozenset[str]:
    """Return the CPU feature flags Linux reports (empty where /proc/cpuinfo is not available)."""
    return frozenset(_cpuinfo("flags").split())


def cpu_name() -> str:
    """Return the CPU's model name, for provenance records and benchmark headers."""
    return _cpuinfo("model name") or platform.processor() or "unknown"


def has_native_bf16() -> bool:
    """True when the CPU computes bf16 in hardware (AVX512-BF16 or AMX); elsewhere bf16 is emulated and slow."""
    return any(flag in cpu_flags() for flag in NATIVE_BF16_FLAGS)


def resolve_precision(precision: str) -> str:
    """Turn ``auto`` into ``bf16`` on CPUs with native bf16 and ``fp32`` elsewhere; check an explicit choice."""
    if precision == "auto":
        return "bf16" if has_native_bf16() else "fp32"
    if precision == "bf16" and not has_native_bf16():
        raise CnnlabError("train.precision: this CPU has no native bf16 (avx512_bf16 or amx_bf16), where bf16 "
                          "is several times slower than fp32; use precision = \"fp32\" or \"auto\"")
    return precision


def autocast(precision: str) -> ContextManager:
    """Return the context for forward passes: bf16 autocast (weights stay fp32) or nothing."""
    if precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()
