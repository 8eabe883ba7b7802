"""The native forward kernels called with numpy arrays, without torch (for ``cnnlab.numpy_model``).

The same compiled functions as ``cnnlab.native.library``'s, given the data pointers of arrays numpy allocates.
Maps are channels-last, (N, H, W, C), as the kernels read and write them. Only a finished build is used: a
process that has no torch never compiles (``python -m cnnlab.native``, which set-up runs, builds them).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cnnlab.cpu import usable_cores
from cnnlab.native.abi import open_library

_loaded: dict[str, ArrayKernels | None] = {}

# Winograd F(2x2, 3x3): U = G g G^T turns each 3x3 filter into a 4x4 one. Flattened, that is one product with
# kron(G, G) (16 x 9) for the whole bank: one small GEMM instead of thousands of 4x3 ones. The torch side
# (``cnnlab.native.autograd``) and the numpy model both transform their filters with it.
WINOGRAD_G = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]], np.float32)
WINOGRAD_GG = np.kron(WINOGRAD_G, WINOGRAD_G)


def _ptr(a: np.ndarray) -> int:
    return a.ctypes.data


def _ptr_or_none(a: np.ndarray | None) -> int | None:
    return None if a is None else a.ctypes.data


def _require(ok: bool, what: str) -> None:
    if not ok:
        raise ValueError(f"native kernels: {what}")


def _float32(a: np.ndarray, ndim: int, what: str) -> None:
    _require(a.dtype == np.float32 and a.ndim == ndim and a.flags.c_contiguous,
             f"{what} must be a contiguous {ndim}-d float32 array")


class ArrayKernels:
    """The forward kernels of one compiled library file, called with numpy arrays on every usable core."""

    def __init__(self, path: Path):
        self.path = path
        self._lib = open_library(path)
        self.threads = usable_cores()

    def conv_pool_forward(self, x: np.ndarray, wt: np.ndarray, bias: np.ndarray, filters: int,
                          relu: bool, threads: int = 0, sums: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """One-channel conv + bias + 2x2 max-pool (+ ReLU): ``x`` (N, H, W), ``wt`` (K*K, filters padded to 32s),
        ``bias`` padded alike; returns (the pooled maps (N, (H-K+1)//2, (W-K+1)//2, filters), with ``sums`` each
        pooled window's sum of its four conv values after the ReLU (same shape), else None). On ``threads`` (0:
        every usable core); each image is one thread's, so the result is the same on any number."""
        _float32(x, 3, "conv_pool_forward: x")
        _float32(wt, 2, "conv_pool_forward: wt")
        _float32(bias, 1, "conv_pool_forward: bias")
        n, h, w = x.shape
        k, padded = round(wt.shape[0] ** 0.5), wt.shape[1]
        _require(k * k == wt.shape[0] and padded % 32 == 0 and padded - 32 < filters <= padded
                 and bias.shape == (padded,) and k <= min(h, w), "conv_pool_forward: weights do not fit")
        out = np.empty((n, (h - k + 1) // 2, (w - k + 1) // 2, filters), np.float32)
        where = np.empty(out.shape, np.uint8)
        totals = np.empty(out.shape, np.float32) if sums else None
        self._lib.cnnlab_conv_pool_forward(_ptr(x), _ptr(wt), _ptr(bias), _ptr(out), _ptr(where), _ptr_or_none(totals),
                                           n, h, w, k, filters, padded, int(relu), threads or self.threads)
        return out, totals

    def winograd_pool_forward(self, x: np.ndarray, u: np.ndarray, bias: np.ndarray, relu: bool,
                              threads: int = 0, sums: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """3x3 conv + bias + 2x2 max-pool (+ ReLU) by Winograd F(2x2, 3x3): ``x`` (N, H, W, C), ``u`` the
        transformed filters (16, C, K), ``bias`` (K,); returns (the pooled maps (N, (H-2)//2, (W-2)//2, K), the
        windows' sums or None) as ``conv_pool_forward``, on ``threads`` as it."""
        _float32(x, 4, "winograd_pool_forward: x")
        _float32(u, 3, "winograd_pool_forward: u")
        _float32(bias, 1, "winograd_pool_forward: bias")
        n, h, w, c = x.shape
        k = u.shape[2]
        _require(u.shape[:2] == (16, c) and bias.shape == (k,) and min(h, w) >= 4,
                 "winograd_pool_forward: filters, bias or input size do not fit")
        out = np.empty((n, (h - 2) // 2, (w - 2) // 2, k), np.float32)
        where = np.empty(out.shape, np.uint8)
        totals = np.empty(out.shape, np.float32) if sums else None
        self._lib.cnnlab_winograd_pool_forward(_ptr(x), _ptr(u), _ptr(bias), _ptr(out), _ptr(where),
                                               _ptr_or_none(totals), n, c, h, w, k, int(relu), threads or self.threads)
        return out, totals


def load() -> ArrayKernels | None:
    """The kernels where a build for this CPU finished (and ``CNNLAB_NATIVE`` is not 0), else None; once per
    process."""
    if "kernels" not in _loaded:
        from cnnlab import native

        path = native.built_library()
        try:
            _loaded["kernels"] = ArrayKernels(path) if path is not None else None
        except (OSError, AttributeError):  # a damaged file: numpy's own loops serve
            _loaded["kernels"] = None
    return _loaded["kernels"]
