"""The torch side of the native kernels: autograd functions and the modules and helpers the model calls.

Reached as ``cnnlab.native.<name>`` (the package forwards its missing names here, importing this module and
torch on first use). The kernels themselves are loaded by ``cnnlab.native.prepare``; every call here goes
through ``native.kernels()`` and ``native.loaded()``, so a test that replaces them on the package is seen here.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from cnnlab import native
from cnnlab.native import arrays
from cnnlab.native.library import Kernels


def fused_steps() -> Kernels | None:
    """The kernels for a fused optimizer step where they are loaded, outside compiling; else None. Their steps
    give the bits of the optimizers' torch ops, so a step's result never depends on which of the two ran."""
    module = native.loaded()
    return None if module is None or torch.compiler.is_compiling() else module  # type: ignore[return-value]


def _native_input(x: torch.Tensor) -> bool:
    """Whether x is a 4-d float32 CPU tensor, outside tracing and compiling, with the kernels prepared."""
    return (native.loaded() is not None and x.dim() == 4 and x.dtype == torch.float32
            and x.device.type == "cpu" and not torch.jit.is_tracing() and not torch.compiler.is_compiling())


def _fused_forward(ctx, forward: Callable, x: torch.Tensor, filters: torch.Tensor, bias: torch.Tensor | None,
                   *args: Any, relu: bool) -> torch.Tensor:
    """Run a fused conv-pool kernel, ``forward(x, filters, bias, *args, relu=relu)``, and keep what its backward
    pass needs.

    The kernel gets the bias zero-padded to the filters' last dimension (its output channels, padding included)
    or zeros without one; the input, the filters and where each maximum came from are saved (where a fused
    ReLU zeroed an output, a position no window has: the backward pass gives it no gradient).
    """
    channels = filters.shape[-1]
    b = F.pad(bias.detach(), (0, channels - len(bias))) if bias is not None else filters.new_zeros(channels)
    out, where = forward(x, filters, b.contiguous(), *args, relu=relu)
    ctx.save_for_backward(x, filters, where)
    ctx.has_bias = bias is not None
    return out


class _MaxPool2x2(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        out, where = native.kernels().max_pool_forward(x)
        ctx.save_for_backward(where)
        ctx.size = x.shape[2:]
        return out

    @staticmethod
    @once_differentiable  # a second derivative through it raises instead of coming out wrong
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: D102
        (where,) = ctx.saved_tensors
        return native.kernels().max_pool_backward(grad, where, ctx.size[0], ctx.size[1])


def max_pool_2x2(x: torch.Tensor) -> torch.Tensor:
    """2x2 stride-2 max-pool (floor mode): the native kernel for channels-last float32 CPU tensors, else torch."""
    if _native_input(x) and x.is_contiguous(memory_format=torch.channels_last):
        return _MaxPool2x2.apply(x)
    return F.max_pool2d(x, 2)


class MaxPool2x2(torch.nn.Module):
    """``nn.MaxPool2d(2)`` with the native kernel where it applies; no parameters, the same results."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return max_pool_2x2(x)

    def extra_repr(self) -> str:  # noqa: D102
        return "kernel_size=2, stride=2"


class _ConvMaxPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,  # noqa: D102
                relu: bool) -> torch.Tensor:
        # (C, 1, K, K) -> (K*K, C padded to a multiple of 32): the filters of one tap side by side, as the
        # kernel reads them; the padding's zero filters are computed and dropped.
        c = weight.shape[0]
        padded = -(-c // 32) * 32
        wt = F.pad(weight.detach().reshape(c, -1).t(), (0, padded - c)).contiguous()
        ctx.weight_shape = weight.shape
        return _fused_forward(ctx, native.kernels().conv_pool_forward, x, wt, bias, c, relu=relu)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):  # noqa: D102
        x, wt, where = ctx.saved_tensors
        grad, grad_x, grad_w, grad_b = grad.float(), None, None, None
        if ctx.needs_input_grad[0]:  # an input being optimized or explained (filter patterns, saliency)
            grad_x = native.kernels().conv_pool_backward_input(grad, where, wt, x.shape[2], x.shape[3])
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            grad_wt, grad_b = native.kernels().conv_pool_backward(grad, where, x, wt)
            c = ctx.weight_shape[0]
            grad_w = grad_wt[:, :c].t().reshape(ctx.weight_shape)
            grad_b = grad_b[:c] if ctx.has_bias else None
        return grad_x, grad_w, grad_b, None


def zero_padding(conv: torch.nn.Module) -> int | None:
    """The zero padding of a plain float32 conv (stride 1, no dilation, no groups, a square kernel, the same
    padding on every side), or None for any other module: the fused kernels and ``cnnlab.layers.winograd_conv``
    serve only such convs."""
    if not (isinstance(conv, torch.nn.Conv2d) and conv.groups == 1 and conv.stride == (1, 1)
            and conv.dilation == (1, 1) and conv.kernel_size[0] == conv.kernel_size[1]
            and conv.padding_mode == "zeros" and isinstance(conv.padding, tuple)
            and conv.padding[0] == conv.padding[1] and conv.weight.dtype == torch.float32):
        return None
    return conv.padding[0]


def first_conv_pool_applies(x: torch.Tensor, conv: torch.nn.Module) -> bool:
    """Whether ``conv_max_pool`` serves ``conv`` on input ``x`` with ``first_conv_max_pool``.

    It serves a plain one-input-channel convolution (stride 1, no dilation, zero padding or none) of float32
    CPU data, outside tracing and compiling; with the input's gradient where the input needs one (a filter
    pattern's ascent: 5-6x faster than the Winograd kernel, which would serve it otherwise). Under bf16
    autocast it still computes in float32 (as fast, and more exact, as a bf16 first layer here).
    """
    return (zero_padding(conv) is not None and conv.in_channels == 1 and _native_input(x)
            and x.shape[1] == 1)


def first_conv_max_pool(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                        relu: bool = False) -> torch.Tensor:
    """``max_pool2d(conv2d(x, weight, bias), 2)`` for one input channel in one native pass, followed by
    ``relu`` where asked (the same values and gradients as torch's relu after it); see
    ``first_conv_pool_applies`` for when it serves."""
    return _ConvMaxPool.apply(x, weight, bias, relu)


_GG = torch.from_numpy(arrays.WINOGRAD_GG)  # kron(G, G) of Winograd F(2x2, 3x3): see cnnlab.native.arrays


def _winograd_filters(weight: torch.Tensor) -> torch.Tensor:
    """U = G g G^T of a (K, C, 3, 3) filter bank as (16, C, K), kept until the weights change (inference
    passes over many batches transform them once; a training step's in-place update makes a new version)."""
    try:  # (an inference tensor has no version counter: nothing is kept for it)
        version = (weight._version, torch.is_inference_mode_enabled())  # (an inference-mode result must not
    except RuntimeError:                                                 # be saved for a backward pass)
        version = None
    kept = getattr(weight, "_cnnlab_winograd", None)  # kept on the tensor: it goes when the weights go
    if kept is not None and version is not None and kept[0] == version:
        return kept[1]
    k, c = weight.shape[:2]
    with torch.autocast("cpu", enabled=False), torch.no_grad():  # in float32 whatever the context
        u = (_GG @ weight.detach().reshape(k * c, 9).t()).view(16, k, c).transpose(1, 2).contiguous()
    if version is not None:
        weight._cnnlab_winograd = (version, u)
    return u


class _WinogradMaxPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,  # noqa: D102
                relu: bool) -> torch.Tensor:
        forward = native.kernels().winograd_pool_forward
        return _fused_forward(ctx, forward, x, _winograd_filters(weight), bias, relu=relu)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):  # noqa: D102
        x, u, where = ctx.saved_tensors
        c, k = u.shape[1:]
        grad_x, grad_u, grad_b = native.kernels().winograd_pool_backward(
            grad.float(), where, x, u, u.transpose(1, 2).contiguous(), ctx.needs_input_grad[0],
            ctx.needs_input_grad[1])  # (the filter ascent asks for the input's gradient alone)
        grad_w = None if grad_u is None else (  # G^T dU G
            (_GG.t() @ grad_u.view(16, c * k)).view(3, 3, c, k).permute(3, 2, 0, 1).contiguous())
        return grad_x, grad_w, grad_b if ctx.has_bias else None, None


def winograd_pool_applies(x: torch.Tensor, conv: torch.nn.Module) -> bool:
    """Whether ``conv_max_pool`` serves ``conv`` on input ``x`` with ``winograd_conv_max_pool``.

    It serves a plain 3x3 convolution (stride 1, no dilation, no groups, zero padding or none) of channels-last
    float32 CPU maps of at least 4x4 once padded, outside tracing, compiling and autocast (oneDNN's bf16
    convolutions are faster there: the seed recipe trains at 3.0x the baseline with them, 2.5x with this kernel
    in float32).
    """
    pad = zero_padding(conv)
    return (pad is not None and conv.kernel_size == (3, 3) and _native_input(x)
            and min(x.shape[2:]) + 2 * pad >= 4 and x.is_contiguous(memory_format=torch.channels_last)
            and not torch.is_autocast_enabled("cpu"))


def winograd_conv_max_pool(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                           relu: bool = False) -> torch.Tensor:
    """``max_pool2d(conv2d(x, weight, bias), 2)`` for a 3x3 filter bank by Winograd F(2x2, 3x3) in native code,
    followed by ``relu`` where asked: the same values up to float rounding (the relu exactly), gradients for
    all three; see ``winograd_pool_applies`` for when."""
    return _WinogradMaxPool.apply(x, weight, bias, relu)


def conv_max_pool(x: torch.Tensor, conv: torch.nn.Module, relu: bool = False) -> torch.Tensor | None:
    """``max_pool2d(conv(x), 2)``, then ``relu`` where asked, by the native kernel that serves this conv and
    input, or None if none does.

    A zero-padded conv runs as an unpadded one on the padded input (the same sums). The fused relu gives the
    values and gradients of torch's relu on the pooled output (it saves a pass over the map each way).
    """
    if first_conv_pool_applies(x, conv):
        kernel = first_conv_max_pool
    elif winograd_pool_applies(x, conv):
        kernel = winograd_conv_max_pool
    else:
        return None
    pad = conv.padding[0]
    return kernel(F.pad(x, (pad, pad, pad, pad)) if pad else x, conv.weight, conv.bias, relu)
