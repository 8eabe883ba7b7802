"""Speed settings: CPU facts (native bf16), the autocast context to use, the allocator setting for training."""

from __future__ import annotations

import contextlib
from typing import ContextManager, Iterator

import torch

from cnnlab.cpu import cpu_flags, usable_cores
from cnnlab.errors import CnnlabError

NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")



@contextlib.contextmanager
def threads(count: int) -> Iterator[None]:
    """Run the block with torch using ``count`` threads (0 = ``usable_cores()``), then restore the caller's count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count or usable_cores())
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def has_native_bf16() -> bool:
    """True when the CPU computes bf16 in hardware (AVX512-BF16 or AMX); elsewhere bf16 is emulated and slow."""
    return any(flag in cpu_flags() for flag in NATIVE_BF16_FLAGS)


def bf16_pays_off() -> bool:
    """True where bf16 autocast trains faster than fp32: CPUs with AMX (Intel Sapphire Rapids and later).

    With AVX512-BF16 alone (AMD Zen 4/5, Intel Cooper Lake) oneDNN's bf16 convolutions gain little, and under
    autocast the float32 Winograd kernel no longer serves: real seed epochs in bf16 take 1.18-1.19x fp32's on
    an AMD EPYC of the Zen 5 class, 0.87-1.24x on one of the Zen 4 class (either way from one bench to the
    next, and bf16 moves the `fast` preset's accuracy, chosen in fp32); on an Intel Xeon with AMX bf16 was
    1.19x faster than fp32.
    """
    return "amx_bf16" in cpu_flags()


def resolve_precision(precision: str, device: torch.device | str = "cpu") -> str:
    """Turn ``auto`` into ``bf16`` where it pays off and ``fp32`` elsewhere; check an explicit choice.

    On the CPU bf16 pays off with AMX (``bf16_pays_off``) and needs native bf16. On a CUDA device ``auto`` is
    fp32 (the recipes were tuned and measured in fp32; bf16 there is untested), and an explicit bf16 needs a
    GPU that computes it.
    """
    if torch.device(device).type == "cuda":
        if precision == "bf16" and not torch.cuda.is_bf16_supported():
            raise CnnlabError("train.precision: this GPU does not compute bf16; use precision = \"fp32\" or "
                              "\"auto\"")
        return "fp32" if precision == "auto" else precision
    if precision == "auto":
        return "bf16" if bf16_pays_off() else "fp32"
    if precision == "bf16" and not has_native_bf16():
        raise CnnlabError("train.precision: this CPU has no native bf16 (avx512_bf16 or amx_bf16), where bf16 "
                          "is several times slower than fp32; use precision = \"fp32\" or \"auto\"")
    return precision


def autocast(precision: str, device: torch.device | str = "cpu") -> ContextManager:
    """Return the context for forward passes on ``device``: bf16 autocast (weights stay fp32) or nothing."""
    if precision == "bf16":
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


