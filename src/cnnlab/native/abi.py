"""The C functions of ``kernels.h`` as ctypes sees them: their argument types, and the library opened with them.

Shared by the torch side (``cnnlab.native.library``) and the numpy side (``cnnlab.native.arrays``); imports no
torch.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

_PTR, _SIZE, _INT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
SIGNATURES = {
    "cnnlab_max_pool_forward": [_PTR] * 3 + [_SIZE] * 4 + [_INT],
    "cnnlab_max_pool_backward": [_PTR] * 3 + [_SIZE] * 4 + [_INT],
    "cnnlab_conv_pool_forward": [_PTR] * 6 + [_SIZE] * 6 + [_INT] * 2,
    "cnnlab_conv_pool_backward": [_PTR] * 4 + [_SIZE] * 6 + [_INT],
    "cnnlab_conv_pool_backward_input": [_PTR] * 4 + [_SIZE] * 6 + [_INT],
    "cnnlab_winograd_pool_forward": [_PTR] * 6 + [_SIZE] * 5 + [_INT] * 2,
    "cnnlab_winograd_pool_backward": [_PTR] * 7 + [_SIZE] * 5 + [_INT],
    "cnnlab_block_transform": [_PTR] * 4 + [_SIZE] * 8 + [_INT],
    "cnnlab_use_sgemm": [_PTR],
    "cnnlab_use_sqrt": [_PTR],
    "cnnlab_rmsprop_step": [_PTR] * 5 + [_SIZE] + [ctypes.c_double] * 4 + [_INT],
    "cnnlab_adam_step": [_PTR] * 5 + [_SIZE] + [ctypes.c_double] * 5 + [_INT],
}


def open_library(path: Path) -> ctypes.CDLL:
    """Open the compiled library ``path`` with every function's argument types set (OSError or AttributeError
    where the file is damaged or lacks a function)."""
    lib = ctypes.CDLL(str(path))
    for name, args in SIGNATURES.items():
        function = getattr(lib, name)
        function.argtypes, function.restype = args, None
    return lib
