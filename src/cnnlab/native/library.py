"""The compiled kernels behind ctypes: the C functions of ``kernels.h``, with torch tensors in and out.

Torch allocates every output; the C functions get the data pointers, the sizes and torch's thread count. The
checks a C function does not do (dtype, layout, matching sizes) happen here, so a wrong call raises a
ValueError instead of reading past a buffer.
"""

from __future__ import annotations

import ctypes
import platform
from pathlib import Path

import torch

from cnnlab.native.abi import open_library
CHANNELS_LAST = torch.channels_last


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _require(ok: bool, what: str) -> None:
    if not ok:
        raise ValueError(f"native kernels: {what}")


def _float_map(x: torch.Tensor, fmt: torch.memory_format, what: str) -> None:
    layout = "channels-last" if fmt == CHANNELS_LAST else "contiguous"
    _require(x.dim() == 4 and x.dtype == torch.float32 and x.device.type == "cpu"
             and x.is_contiguous(memory_format=fmt), f"{what} must be a 4-d float32 CPU tensor, {layout}")


def _pointers(tensors: list[torch.Tensor]) -> ctypes.Array:
    return (ctypes.c_void_p * len(tensors))(*[t.data_ptr() for t in tensors])


def _written(*lists: list[torch.Tensor]) -> None:
    """Tell torch the tensors changed in place behind its back (their version counters): what caches a
    result per weights' version (the Winograd filters) must see new weights."""
    for tensors in lists:
        torch.autograd.graph.increment_version(tensors)


def _dense(t: torch.Tensor) -> bool:
    return t.is_contiguous() or (t.dim() == 4 and t.is_contiguous(memory_format=CHANNELS_LAST))


def steps_apply(params: list[torch.Tensor], *others: list[torch.Tensor]) -> bool:
    """Whether the fused optimizer steps serve ``params`` with ``others`` (lists in the same order: gradients,
    optimizer slots): dense float32 CPU parameters, and every other tensor a float32 CPU tensor laid out as its
    parameter (the steps treat each as one flat run of elements)."""
    f32 = torch.float32
    for i, p in enumerate(params):
        if p.dtype != f32 or not p.is_cpu or not _dense(p):
            return False
        stride, n = p.stride(), p.numel()
        for ts in others:
            t = ts[i]
            if t.dtype != f32 or not t.is_cpu or t.stride() != stride or t.numel() != n:
                return False
    return True


def torch_function(name: str) -> int | None:
    """The address of the C function ``name`` that torch's CPU library exports, or None."""
    suffix = {"Darwin": ".dylib", "Windows": ".dll"}.get(platform.system(), ".so")
    library = ("" if platform.system() == "Windows" else "lib") + "torch_cpu" + suffix
    try:
        found = ctypes.CDLL(str(Path(torch.__file__).parent / "lib" / library))  # already loaded by torch
        return ctypes.cast(getattr(found, name), ctypes.c_void_p).value
    except (OSError, AttributeError):
        return None


def blas_sgemm() -> int | None:
    """The address of the Fortran ``sgemm_`` that torch's CPU library exports (MKL or OpenBLAS), or None."""
    return torch_function("sgemm_")


def torch_sqrt() -> int | None:
    """MKL's ``vsSqrt``, where torch's CPU library has MKL: torch's float32 sqrt (which is not correctly
    rounded); None where torch has no MKL (its sqrt is then the correctly rounded one)."""
    return torch_function("vsSqrt") if torch.backends.mkl.is_available() else None


class Kernels:
    """The kernels of one compiled library file, called with tensors."""

    def __init__(self, path: Path):
        self.path = path
        self._lib = open_library(path)
        self.gemm = "loops"
        self._lib.cnnlab_use_sqrt(torch_sqrt())  # the optimizer steps' square roots: torch's own

    def use_gemm(self, gemm: str) -> None:
        """The Winograd step's matrix products: ``"loops"`` (the library's own) or ``"blas"`` (torch's sgemm_)."""
        address = blas_sgemm() if gemm == "blas" else None
        _require(gemm == "loops" or address is not None, f"no sgemm_ for gemm {gemm!r}")
        self._lib.cnnlab_use_sgemm(address)
        self.gemm = gemm

    def max_pool_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """2x2 stride-2 max-pool of a channels-last map: (output, window positions)."""
        _float_map(x, CHANNELS_LAST, "max_pool_forward: x")
        n, c, h, w = x.shape
        out = torch.empty(n, c, h // 2, w // 2, memory_format=CHANNELS_LAST)
        where = torch.empty(n, h // 2, w // 2, c, dtype=torch.uint8)
        self._lib.cnnlab_max_pool_forward(_ptr(x), _ptr(out), _ptr(where), n, c, h, w, torch.get_num_threads())
        return out, where

    def max_pool_backward(self, grad: torch.Tensor, where: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """The gradient of ``max_pool_forward`` for an input of ``height`` x ``width``."""
        grad = grad.float().contiguous(memory_format=CHANNELS_LAST)
        n, c, h, w = grad.shape
        _require((height // 2, width // 2) == (h, w) and where.shape == (n, h, w, c),
                 "max_pool_backward: input size does not match the gradient")
        grad_in = torch.empty(n, c, height, width, memory_format=CHANNELS_LAST)
        self._lib.cnnlab_max_pool_backward(_ptr(grad), _ptr(where), _ptr(grad_in), n, c, height, width,
                                           torch.get_num_threads())
        return grad_in

    def conv_pool_forward(self, x: torch.Tensor, wt: torch.Tensor, bias: torch.Tensor, filters: int,
                          relu: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """One-channel conv + bias + 2x2 max-pool (+ ReLU with ``relu``); ``wt`` (K*K, filters padded to 32s),
        ``bias`` padded alike."""
        x = x.contiguous()
        _float_map(x, torch.contiguous_format, "conv_pool_forward: x")
        n, _, h, w = x.shape
        k = self._kernel_size(x, wt, filters, bias)
        out = torch.empty(n, filters, (h - k + 1) // 2, (w - k + 1) // 2, memory_format=CHANNELS_LAST)
        where = torch.empty(n, out.shape[2], out.shape[3], filters, dtype=torch.uint8)
        self._lib.cnnlab_conv_pool_forward(_ptr(x), _ptr(wt), _ptr(bias), _ptr(out), _ptr(where), None, n, h, w,
                                           k, filters, wt.shape[1], int(relu), torch.get_num_threads())
        return out, where

    def conv_pool_backward(self, grad: torch.Tensor, where: torch.Tensor, x: torch.Tensor,
                           wt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gradients of ``conv_pool_forward``: (weights as (K*K, padded), bias padded)."""
        x, grad = x.contiguous(), grad.float().contiguous(memory_format=CHANNELS_LAST)
        n, _, h, w = x.shape
        filters = grad.shape[1]
        k = self._kernel_size(x, wt, filters)
        _require(grad.shape == (n, filters, (h - k + 1) // 2, (w - k + 1) // 2) and where.shape[0] == n,
                 "conv_pool_backward: the gradient does not match")
        total = torch.empty((k * k + 1) * wt.shape[1])
        self._lib.cnnlab_conv_pool_backward(_ptr(grad), _ptr(where), _ptr(x), _ptr(total), n, h, w, k, filters,
                                            wt.shape[1], torch.get_num_threads())
        return total[:k * k * wt.shape[1]].view(k * k, wt.shape[1]), total[k * k * wt.shape[1]:]

    def conv_pool_backward_input(self, grad: torch.Tensor, where: torch.Tensor, wt: torch.Tensor, height: int,
                                 width: int) -> torch.Tensor:
        """The input's gradient of ``conv_pool_forward`` for an input of ``height`` x ``width``: (N, 1, H, W)."""
        grad = grad.float().contiguous(memory_format=CHANNELS_LAST)
        n, filters, h, w = grad.shape
        k = self._kernel_size(torch.empty(n, 1, height, width), wt, filters)
        _require((h, w) == ((height - k + 1) // 2, (width - k + 1) // 2) and where.shape == (n, h, w, filters),
                 "conv_pool_backward_input: the gradient does not match")
        dx = torch.empty(n, 1, height, width)
        self._lib.cnnlab_conv_pool_backward_input(_ptr(grad), _ptr(where), _ptr(wt), _ptr(dx), n, height, width, k,
                                                  filters, wt.shape[1], torch.get_num_threads())
        return dx

    @staticmethod
    def _kernel_size(x: torch.Tensor, wt: torch.Tensor, filters: int, bias: torch.Tensor | None = None) -> int:
        padded = wt.shape[1] if wt.dim() == 2 else 0
        k = round(wt.shape[0] ** 0.5) if wt.dim() == 2 else 0
        _require(x.shape[1] == 1 and wt.dtype == torch.float32 and wt.is_contiguous() and padded % 32 == 0
                 and padded - 32 < filters <= padded and k * k == wt.shape[0] and k <= min(x.shape[2:]),
                 "conv_pool: the weights must be a contiguous float32 (K*K, C padded to a multiple of 32) "
                 "matrix of a one-channel input's filters")
        _require(bias is None or (bias.numel() == padded and bias.is_contiguous() and bias.dtype == torch.float32),
                 "conv_pool: bias must be padded as the weights")
        return k

    def winograd_pool_forward(self, x: torch.Tensor, u: torch.Tensor, bias: torch.Tensor,
                              relu: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """3x3 conv + bias + 2x2 max-pool (+ ReLU with ``relu``) by Winograd F(2x2, 3x3); ``u`` the transformed
        filters (16, C, K)."""
        n, c, h, w, k = self._winograd_shape(x, u)
        _require(bias.shape == (k,) and bias.is_contiguous() and bias.dtype == torch.float32,
                 "winograd_pool: bias must have one value per filter")
        out = torch.empty(n, k, (h - 2) // 2, (w - 2) // 2, memory_format=CHANNELS_LAST)
        where = torch.empty(n, out.shape[2], out.shape[3], k, dtype=torch.uint8)
        self._lib.cnnlab_winograd_pool_forward(_ptr(x), _ptr(u), _ptr(bias), _ptr(out), _ptr(where), None, n, c,
                                               h, w, k, int(relu), torch.get_num_threads())
        return out, where

    def winograd_pool_backward(self, grad: torch.Tensor, where: torch.Tensor, x: torch.Tensor, u: torch.Tensor,
                               u_t: torch.Tensor, input_grad: bool, filter_grad: bool = True):
        """Gradients of ``winograd_pool_forward``: (input or None, transformed filters (16, C, K) or None,
        bias); what is not asked for is not computed."""
        n, c, h, w, k = self._winograd_shape(x, u)
        grad = grad.float().contiguous(memory_format=CHANNELS_LAST)
        _require(grad.shape == (n, k, (h - 2) // 2, (w - 2) // 2) and where.shape == (n, grad.shape[2],
                 grad.shape[3], k), "winograd_pool_backward: the gradient does not match")
        _require(u_t.shape == (16, k, c) and u_t.is_contiguous(), "winograd_pool_backward: u_t must be u "
                 "transposed, (16, K, C)")
        dx = torch.zeros(n, h, w, c).permute(0, 3, 1, 2) if input_grad else None  # zeroed, channels-last
        du, dbias = torch.empty(16, c, k) if filter_grad else None, torch.empty(k)
        self._lib.cnnlab_winograd_pool_backward(_ptr(grad), _ptr(where), _ptr(x), _ptr(u_t), _ptr(dx), _ptr(du),
                                                _ptr(dbias), n, c, h, w, k, torch.get_num_threads())
        return dx, du, dbias

    def block_transform(self, side: torch.Tensor, x: torch.Tensor, out: torch.Tensor,
                        bias: torch.Tensor | None = None) -> torch.Tensor:
        """``out[g] = L X L^T (+ bias)`` for each block X of x (G, Q * Q, C) into out (G, P * P, C), float32, with
        ``side`` the matrix L (P x Q: 5 x 5, 3 x 5 or 5 x 3) and each block's positions row by row; the last dimension
        contiguous, the first two of any strides. Returns out."""
        (p, q), (g, c) = side.shape, (x.shape[0], x.shape[2])
        _require(side.is_contiguous() and (p, q) in ((5, 5), (3, 5), (5, 3)) and x.dim() == 3 and x.shape[1] == q * q
                 and out.shape == (g, p * p, c) and all(t.dtype == torch.float32 and t.device.type == "cpu"
                                                       and t.stride(-1) == 1 for t in (side, x, out)),
                 "block_transform: shapes or layouts do not match")
        _require(bias is None or (bias.shape == (c,) and bias.is_contiguous() and bias.dtype == torch.float32),
                 "block_transform: bias must have one value per channel")
        self._lib.cnnlab_block_transform(_ptr(side), _ptr(x), _ptr(out), _ptr(bias), p, q, g, c, x.stride(0),
                                         x.stride(1), out.stride(0), out.stride(1), torch.get_num_threads())
        return out

    def rmsprop_step(self, params: list[torch.Tensor], grads: list[torch.Tensor], velocity: list[torch.Tensor],
                     momentum: list[torch.Tensor] | None, lr: float, rho: float, momentum_factor: float,
                     epsilon: float) -> bool:
        """One Keras RMSprop step (not centered) in place, the bits of ``cnnlab.optim.KerasRMSprop``'s torch ops
        (``momentum`` None where the rule has none), where ``steps_apply``; else False, nothing touched."""
        slots = [velocity] if momentum is None else [velocity, momentum]
        if not steps_apply(params, grads, *slots):
            return False
        sizes = (ctypes.c_int64 * len(params))(*[p.numel() for p in params])
        self._lib.cnnlab_rmsprop_step(_pointers(params), _pointers(grads), _pointers(velocity),
                                      None if momentum is None else _pointers(momentum), sizes, len(params), lr,
                                      rho, momentum_factor, epsilon, torch.get_num_threads())
        _written(params, *slots)
        return True

    def adam_step(self, params: list[torch.Tensor], grads: list[torch.Tensor], m: list[torch.Tensor],
                  v: list[torch.Tensor], alpha: float, beta_1: float, beta_2: float, epsilon: float,
                  decay: float = 1.0) -> bool:
        """One Keras Adam step (no amsgrad) in place, each parameter first multiplied by ``decay`` (AdamW): the
        bits of ``cnnlab.optim.KerasAdam``'s torch ops, where ``steps_apply``; else False, nothing touched."""
        if not steps_apply(params, grads, m, v):
            return False
        sizes = (ctypes.c_int64 * len(params))(*[p.numel() for p in params])
        self._lib.cnnlab_adam_step(_pointers(params), _pointers(grads), _pointers(m), _pointers(v), sizes,
                                   len(params), alpha, beta_1, beta_2, epsilon, decay, torch.get_num_threads())
        _written(params, m, v)
        return True

    @staticmethod
    def _winograd_shape(x: torch.Tensor, u: torch.Tensor) -> tuple[int, int, int, int, int]:
        _float_map(x, CHANNELS_LAST, "winograd_pool: x")
        _require(u.dim() == 3 and u.shape[:2] == (16, x.shape[1]) and u.is_contiguous() and u.dtype == torch.float32,
                 "winograd_pool: the filters must be a (16, C, K) tensor")
        _require(min(x.shape[2:]) >= 4, "winograd_pool: the input must be at least 4x4")
        n, c, h, w = x.shape
        return n, c, h, w, u.shape[2]
