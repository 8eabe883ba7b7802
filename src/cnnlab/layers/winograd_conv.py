"""Winograd's F(3x3, 3x3) for torch: the conv module a 3x3 layer on 5x5 maps (the seed model's Conv2D_3) trains
through.

The same algorithm and matrices as the numpy model's (``cnnlab.winograd``): the 5x5 input of each image becomes
``B^T d B``, each filter ``G g G^T``, the 25 positions are 25 matrix products summed over the input channels and
``A^T m A`` gives the 3x3 outputs; 25 products per channel pair instead of 81. The backward pass is the exact
adjoint of these linear steps (the input's gradient ``B (U^T (A dy A^T)) B^T``, the filters'
``G^T (V^T (A dy A^T)) G``): three batched products of the same size in all, and six transforms, which the native
``block_transform`` kernel does where the kernels are loaded (torch's matmul otherwise).

Where it serves: a plain 3x3 stride-1 convolution with 64 or more input channels of channels-last float32 CPU
maps that are 5x5 once padded, outside autocast, tracing, compiling and export (torch's own convolution runs
everywhere else). The seed model's Conv2D_3 (5x5x64 -> 3x3x128), forward and backward of a batch of 64, 2 cores,
AMD EPYC Zen 4 class: oneDNN 2.26-2.37 ms, this 1.55-1.75 ms. On larger maps, whose blocks overlap, oneDNN was
faster (0.3-0.9x of its speed at 7x7 to 28x28 with the blocks cut out and added back in torch). A layer followed by
a 2x2 max-pool has the native fused kernel instead (``cnnlab.native``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from cnnlab import native, winograd

_OUTPUT, _FILTER, _INPUT = (torch.from_numpy(m).float().contiguous()  # A^T (3x5), G (5x3), B^T (5x5)
                             for m in winograd.matrices(winograd.TILE, 3, winograd.POINTS))
# The backward pass's transforms: A (5x3), G^T (3x5), B (5x5)
_OUTPUT_T, _FILTER_T, _INPUT_T = (m.t().contiguous() for m in (_OUTPUT, _FILTER, _INPUT))


def _transform(side: torch.Tensor, x: torch.Tensor, out: torch.Tensor, bias: torch.Tensor | None = None
               ) -> torch.Tensor:
    """``out[g] = L X L^T (+ bias)`` for each block X of channel vectors x (G, Q * Q, C) into out (G, P * P, C),
    with ``side`` the matrix L (P x Q), both laid out as the products around them read and write: by the native
    kernel where loaded (float32), else by torch's matmul with kron(L, L). Returns out."""
    kernels = native.loaded()
    if kernels is not None and x.dtype == torch.float32:
        return kernels.block_transform(side, x, out, bias)  # type: ignore[attr-defined]
    out.copy_(torch.matmul(torch.kron(side, side).to(x.dtype), x))
    return out if bias is None else out.add_(bias)


class _Winograd3x3(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:  # noqa: D102
        n, c = x.shape[:2]
        f, new = weight.shape[0], x.new_empty
        # The filters as (F, 9, C) blocks (a view of channels-last weights), the input as (N, 25, C) (a view of
        # channels-last maps); u_t = U^T, (25, F, C), v (25, N, C) for the products.
        filters = weight.detach().permute(0, 2, 3, 1).contiguous().view(f, 9, c)
        u_t = _transform(_FILTER, filters, new(25, f, c).transpose(0, 1)).transpose(0, 1)
        blocks = x.detach().permute(0, 2, 3, 1).reshape(n, 25, c)
        v = _transform(_INPUT, blocks, new(25, n, c).transpose(0, 1)).transpose(0, 1)
        m = torch.bmm(v, u_t.transpose(1, 2))  # (25, N, F)
        y = _transform(_OUTPUT, m.transpose(0, 1), new(n, 9, f),
                       None if bias is None else bias.detach().to(x.dtype).contiguous())
        ctx.save_for_backward(v, u_t)
        ctx.has_bias = bias is not None
        return y.view(n, 3, 3, f).permute(0, 3, 1, 2)  # channels-last

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):  # noqa: D102
        v, u_t = ctx.saved_tensors
        (_, n, c), f, new = v.shape, u_t.shape[1], v.new_empty
        g = grad.to(v.dtype).permute(0, 2, 3, 1).reshape(n, 9, f)  # a view of a channels-last gradient
        dm = _transform(_OUTPUT_T, g, new(25, n, f).transpose(0, 1)).transpose(0, 1)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            dv = torch.bmm(dm, u_t)  # (25, N, C)
            blocks = _transform(_INPUT_T, dv.transpose(0, 1), new(n, 25, c))
            grad_x = blocks.view(n, 5, 5, c).permute(0, 3, 1, 2)
        if ctx.needs_input_grad[1]:
            du_t = torch.bmm(dm.transpose(1, 2), v)  # (25, F, C)
            filters = _transform(_FILTER_T, du_t.transpose(0, 1), new(f, 9, c))
            grad_w = filters.view(f, 3, 3, c).permute(0, 3, 1, 2)  # channels-last, as the weights train
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = g.sum((0, 1))
        return grad_x, grad_w, grad_b


def applies(x: torch.Tensor, conv: nn.Conv2d) -> bool:
    """Whether ``WinogradConv2d`` runs ``conv`` on ``x`` by Winograd: a plain 3x3 stride-1 convolution (no
    dilation, no groups, the same zero padding on every side) with 64 or more input channels, of channels-last
    float32 CPU maps of 5x5 once padded (one block per image), outside autocast, tracing, compiling and ONNX
    export."""
    pad = native.zero_padding(conv)  # (the plain-conv check the fused kernels use)
    return (pad is not None and conv.kernel_size == (3, 3) and conv.in_channels >= winograd.MIN_CHANNELS
            and x.dim() == 4 and x.dtype == torch.float32 and x.device.type == "cpu"
            and x.is_contiguous(memory_format=torch.channels_last)
            and all(size + 2 * pad == winograd.SPAN for size in x.shape[2:])
            and not torch.is_autocast_enabled("cpu") and not torch.jit.is_tracing()
            and not torch.compiler.is_compiling() and not torch.onnx.is_in_onnx_export())


def conv3x3(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The 'valid' 3x3 convolution, stride 1, of channels-last float32 maps ``x`` (N, C, 5, 5) with ``weight``
    (F, C, 3, 3) and ``bias`` (F,) or None, by Winograd F(3x3, 3x3): ``F.conv2d``'s values up to float rounding,
    channels-last, with gradients for all three."""
    return _Winograd3x3.apply(x, weight, bias)


class WinogradConv2d(nn.Conv2d):
    """``nn.Conv2d`` that runs by Winograd F(3x3, 3x3) where ``applies`` says so, by torch's own convolution
    elsewhere: the same parameters, state dict and results up to float rounding."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        if not applies(x, self):
            return super().forward(x)
        pad = self.padding[0]  # (the same on every side: see applies)
        if pad:
            x = F.pad(x, (pad, pad, pad, pad)).contiguous(memory_format=torch.channels_last)
        return conv3x3(x, self.weight, self.bias)
