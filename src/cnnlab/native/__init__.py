"""Native kernels: C++ compiled once per machine with torch's extension loader, torch's own ops otherwise.

One kernel for now, the 2x2 stride-2 max-pool of channels-last float32 tensors (forward and backward), which
gives the same values and gradients as ``F.max_pool2d`` with about half the memory traffic. It is built on
first use, or by ``python -m cnnlab.native`` (which ``make`` runs at set-up), into the cnnlab cache folder,
under a name that changes with the source, torch, Python and the CPU's flags (it is compiled for this CPU).
Where it cannot be built (no C++ compiler, say) or ``CNNLAB_NATIVE=0`` is set, torch's max-pool serves.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import sys
import time
from pathlib import Path
from types import ModuleType

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

SOURCE = Path(__file__).with_name("maxpool2x2.cpp")
# For this CPU (the build is cached per CPU). -fopenmp makes at::parallel_for parallel (its OpenMP pragmas are
# compiled here) and vectorizes the channel loops; libgomp resolves to the copy torch has already loaded, so
# the kernels share torch's threads and follow torch.set_num_threads.
CFLAGS = ["-O3", "-march=native", "-fopenmp"]
_status: dict[str, str] = {}


def _build_name() -> str:
    from cnnlab.speed import cpu_flags

    key = "|".join([SOURCE.read_text(), " ".join(CFLAGS), torch.__version__, sys.version, platform.machine(),
                    " ".join(sorted(cpu_flags()))])
    return "cnnlab_native_" + hashlib.sha256(key.encode()).hexdigest()[:12]


@functools.lru_cache(maxsize=None)
def kernels() -> ModuleType | None:
    """Return the compiled kernels (building them the first time, about 25 s), or None where unavailable."""
    if os.environ.get("CNNLAB_NATIVE", "1") == "0":
        _status["why"] = "switched off by CNNLAB_NATIVE=0"
        return None
    from cnnlab.files import home_dir

    name = _build_name()
    folder = home_dir() / "native" / name
    start = time.perf_counter()
    try:
        from torch.utils.cpp_extension import load

        folder.mkdir(parents=True, exist_ok=True)
        module = load(name=name, sources=[str(SOURCE)], build_directory=str(folder),
                      extra_cflags=CFLAGS, extra_ldflags=["-fopenmp"], verbose=False)
    except Exception as exc:  # noqa: BLE001 - a missing compiler or ninja shows up in many forms
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        _status["why"] = f"could not be built ({type(exc).__name__}: {first_line})"
        return None
    seconds = time.perf_counter() - start
    _status["why"] = f"ready in {folder} ({seconds:.1f} s to load or build)"
    _status["news"] = f"built for this CPU in {seconds:.0f} s (once)" if seconds > 3 else ""
    return module


def status() -> str:
    """Return one line on the kernels: where they are, or why torch's ops serve instead."""
    kernels()
    return _status.get("why", "")


def news() -> str:
    """Return what a training run should tell its user: a build just done or a build that failed, else ""."""
    kernels()
    why = _status.get("why", "")
    return why if why.startswith("could not") else _status.get("news", "")


class _MaxPool2x2(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        out, where = kernels().max_pool_forward(x)
        ctx.save_for_backward(where)
        ctx.size = x.shape[2:]
        return out

    @staticmethod
    @once_differentiable  # a second derivative through it raises instead of coming out wrong
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: D102
        (where,) = ctx.saved_tensors
        return kernels().max_pool_backward(grad, where, ctx.size[0], ctx.size[1])


def max_pool_2x2(x: torch.Tensor) -> torch.Tensor:
    """2x2 stride-2 max-pool (floor mode): the native kernel for channels-last float32 CPU tensors, else torch."""
    if (x.dim() == 4 and x.dtype == torch.float32 and x.device.type == "cpu"
            and x.is_contiguous(memory_format=torch.channels_last) and not torch.jit.is_tracing()
            and not torch.compiler.is_compiling() and kernels() is not None):
        return _MaxPool2x2.apply(x)
    return F.max_pool2d(x, 2)


class MaxPool2x2(torch.nn.Module):
    """``nn.MaxPool2d(2)`` with the native kernel where it applies; no parameters, the same results."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return max_pool_2x2(x)

    def extra_repr(self) -> str:  # noqa: D102
        return "kernel_size=2, stride=2"
