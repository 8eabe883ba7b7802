"""Native kernels: plain C++ compiled once per machine and called through ctypes, torch's own ops otherwise.

Three layer kernels, forward and backward each:

- ``max_pool_2x2``: the 2x2 stride-2 max-pool of channels-last float32 tensors; the same values and gradients
  as ``F.max_pool2d`` with about half the memory traffic.
- ``first_conv_max_pool``: a first layer's one-channel convolution and the 2x2 max-pool after it in one pass
  (the full-size convolution output is never written); the values of ``max_pool2d(conv2d(...), 2)`` up to
  float rounding, gradients for the weights and the bias.
- ``winograd_conv_max_pool``: a 3x3 convolution and the 2x2 max-pool after it by Winograd's F(2x2, 3x3)
  (16 multiplications per 2x2 block instead of 36; the blocks are the pooling windows); the same values up to
  float rounding, gradients for the input, the weights and the bias.

``conv_max_pool`` picks the one that serves a conv layer and its input; the model's forward pass asks it for
every conv layer a max-pool follows. ``block_transform`` (on the loaded kernels) does Winograd F(3x3, 3x3)'s
transforms for ``cnnlab.layers.winograd_conv``, a 3x3 layer on 5x5 maps that no pool follows. And one optimizer
step of Keras' RMSprop or Adam in a single pass over each tensor (``fused_steps``; ``cnnlab.optim`` calls it),
with the bits of the torch ops it replaces.

The C++ sources use no torch headers: ``cnnlab.native.build`` compiles them in one compiler call (seconds) and
keeps the per-CPU cache, the build lock and the record of a failed build; ``cnnlab.native.library`` calls the
compiled functions with the data pointers of tensors torch allocates, ``cnnlab.native.arrays`` the forward
kernels with numpy arrays (the torch-free inference of ``cnnlab.numpy_model``); the autograd functions stay in
Python, in ``cnnlab.native.autograd``. This module imports no torch: it loads the kernels, and its torch-side
names (``conv_max_pool``, ``MaxPool2x2``, ...) are those of ``cnnlab.native.autograd``, imported on first use.

Nothing is compiled or loaded when a model is built or summarized: ``prepare`` does it when training or
inference on the fast path starts (``python -m cnnlab.native``, which ``make`` runs at set-up, does it
ahead), and says so on the terminal when it compiles. Until then, and where they cannot be built (no C++
compiler, say) or ``CNNLAB_NATIVE=0`` is set, torch's ops serve.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from cnnlab.native import build

if TYPE_CHECKING:
    from cnnlab.native.library import Kernels

_state: dict[str, object] = {}  # "module": the Kernels once prepared (None where unavailable); "why": status line


def _stderr(line: str) -> None:
    print(f"cnnlab: {line}", file=sys.stderr, flush=True)


def prepare(echo: Callable[[str], None] | None = _stderr, retry: bool = False) -> Kernels | None:
    """Load the kernels (compiling them for this CPU the first time, a few seconds) and return them, or None.

    Once per process. ``echo`` gets a line when something a user should know happens: a compile starting and
    ending, a wait for another process's build, a killed build's partial output removed, a build failing
    (default: standard error; None: silent). ``retry`` forgets a recorded failed build first.
    """
    if "module" in _state:
        return _state["module"]  # type: ignore[return-value]
    if os.environ.get("CNNLAB_NATIVE", "1") == "0":
        module, why = None, "switched off by CNNLAB_NATIVE=0"
    else:
        from cnnlab.files import home_dir

        builder = build.Builder(home_dir() / "native", build.build_name())
        if retry:
            builder.forget_failure()
        module, why = builder.load(echo or (lambda _line: None), build.compile_kernels)
    _state.update(module=module, why=why)
    return module


def prepare_for(device: Any) -> None:
    """At the start of a pass on ``device``: load the kernels where they can serve (the CPU), saying so on standard
    error when they compile. Every pass calls it, so whether the kernels serve a pass never depends on what ran
    earlier in the process (they serve wherever they apply once loaded)."""
    from cnnlab.device import uses_native_kernels

    if uses_native_kernels(device):
        prepare()


def kernels() -> Kernels | None:
    """Return the kernels, preparing them (silently) if this process has not yet; None where unavailable."""
    return prepare(echo=None)


def loaded() -> Kernels | None:
    """The kernels where this process has prepared them, else None; never prepares them (a forward pass serves
    them only once ``prepare`` or ``prepare_for`` has chosen them for the model's device)."""
    return _state.get("module")  # type: ignore[return-value]


def forget() -> None:
    """Forget what ``prepare`` found in this process (for tests that build in another cache)."""
    _state.clear()


def status() -> str:
    """Return one line on the kernels: where they are, or why torch's ops serve instead."""
    kernels()
    return str(_state.get("why", ""))


def built_library() -> Path | None:
    """The compiled library file for this CPU where a build finished (and ``CNNLAB_NATIVE`` is not 0), else None;
    found without torch and without building."""
    if os.environ.get("CNNLAB_NATIVE", "1") == "0":
        return None
    from cnnlab.files import home_dir

    return build.Builder(home_dir() / "native", build.build_name()).built()


def __getattr__(name: str) -> Any:
    """The torch side (``conv_max_pool``, ``MaxPool2x2``, ``fused_steps``, ...), from ``cnnlab.native.autograd``:
    imported on first use, so that loading the kernels or the torch-free inference imports no torch."""
    if name.startswith("__") or (Path(__file__).parent / f"{name}.py").exists():
        raise AttributeError(name)  # a submodule: ``from cnnlab.native import arrays`` imports it, not torch
    value = getattr(importlib.import_module("cnnlab.native.autograd"), name)
    globals()[name] = value  # found once: the model and the optimizers ask for some of these every step
    return value
