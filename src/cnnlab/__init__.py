"""cnnlab: build, train fast and look inside small CNNs on the real MNIST.

The public functions are imported on first use, so ``cnnlab --version`` does not pay for importing torch.
"""

from __future__ import annotations

from typing import Any

from cnnlab.errors import CnnlabError

__version__ = "0.1.0"

_LAZY = {
    "get_schedule": "cnnlab.optim", "get_optimizer": "cnnlab.optim", "get_regularizer": "cnnlab.optim",
    "train": "cnnlab.run", "resume": "cnnlab.run", "reset": "cnnlab.run", "load": "cnnlab.run",
    "Run": "cnnlab.run", "load_config": "cnnlab.config", "Config": "cnnlab.config",
    "build_model": "cnnlab.model", "load_mnist": "cnnlab.data",
    "import_keras": "cnnlab.interop", "export_onnx": "cnnlab.interop",
    "compare": "cnnlab.compare",
}

__all__ = ["__version__", "CnnlabError", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cnnlab' has no attribute {name!r}")
