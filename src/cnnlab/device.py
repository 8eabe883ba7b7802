"""Where tensors live: ``auto``, ``cpu`` or ``cuda`` resolved to a torch device, and the CUDA facts runs record.

Training, inference and every inspection command run on one device: the model is moved there once and the data
go there once (batches are slices of tensors already on it). What is written to a run folder is always on the
CPU, so a run trained on a GPU loads and inspects on a machine without one.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from cnnlab.errors import CnnlabError
from cnnlab.schema import check_choice

DEVICES = ("auto", "cpu", "cuda")
CPU = torch.device("cpu")


def resolve_device(name: str, where: str = "train.device") -> torch.device:
    """Turn ``auto`` (CUDA when torch sees a CUDA device, else the CPU), ``cpu`` or ``cuda`` into a torch device.

    Args:
        name: one of ``DEVICES``.
        where: how the user gave it (``train.device`` or ``--device``), for the one-line errors.

    Raises:
        CnnlabError: a name that is not one of ``DEVICES`` (with a did-you-mean), or ``cuda`` where torch sees
            no CUDA device.
    """
    check_choice(where, name, DEVICES)
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return CPU
    if not torch.cuda.is_available():
        option = where.startswith("--")
        given, fix = (f"{where} {name}", f"{where} cpu or auto") if option else \
            (f'{where} = "{name}"', f'{where} = "cpu" or "auto"')
        raise CnnlabError(f"{given}: torch sees no CUDA device ({cuda_seen()}); use {fix}")
    return torch.device("cuda")  # the current CUDA device


def cuda_seen() -> str:
    """What torch sees of CUDA, in words: its build, and the devices (or why none)."""
    built = torch.version.cuda
    if not built:
        return f"torch {torch.__version__} is a build without CUDA"
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if not count:
        return f"torch {torch.__version__} is built for CUDA {built}, but no GPU or driver is visible"
    return f"{count} CUDA device{'s' if count > 1 else ''}: {torch.cuda.get_device_name(0)}"


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's weights (the CPU for a model without any)."""
    first = next(iter(model.parameters()), None)
    return first.device if first is not None else CPU


def describe(device: torch.device) -> str:
    """The device as provenance records it: ``cpu``, or ``cuda`` with the GPU's name."""
    if device.type != "cuda":
        return device.type
    return f"cuda ({torch.cuda.get_device_name(device)})"


def uses_native_kernels(device: torch.device) -> bool:
    """Whether cnnlab's native kernels (CPU only) can serve forward passes on ``device``."""
    return device.type == "cpu"


@contextlib.contextmanager
def reproducible(device: torch.device) -> Iterator[None]:
    """On a CUDA device, run the block with cuDNN's deterministic algorithms and without its autotuner (which
    may pick another algorithm per process), so that 2 + 2 epochs equal 4 bit for bit there too; the caller's
    settings come back after. Nothing changes on the CPU."""
    if device.type != "cuda":
        yield
        return
    cudnn = torch.backends.cudnn
    before = cudnn.deterministic, cudnn.benchmark
    cudnn.deterministic, cudnn.benchmark = True, False
    try:
        yield
    finally:
        cudnn.deterministic, cudnn.benchmark = before


def get_cuda_rng(device: torch.device) -> torch.Tensor | None:
    """The CUDA generator state of ``device`` (dropout draws from it there); None on the CPU."""
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def set_cuda_rng(device: torch.device, state: torch.Tensor | None, seed: int) -> None:
    """Put ``state`` into the CUDA generator of ``device``, or seed it with ``seed`` where there is no state
    (a fresh run, or a run trained on the CPU so far); nothing on the CPU."""
    if device.type != "cuda":
        return
    if state is None:
        with torch.cuda.device(device):
            torch.cuda.manual_seed(seed)
    else:
        torch.cuda.set_rng_state(state, device)
