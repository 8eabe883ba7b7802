"""The torch modules layer kinds build beyond torch's own: Keras ``same`` padding and global average pooling."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.layers.base import same_pads

_ACTIVATION_MODULES = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "elu": nn.ELU, "gelu": nn.GELU,
                       "linear": nn.Identity, "softmax": lambda: nn.Softmax(dim=1)}


def activation_module(name: str) -> nn.Module:
    """Return a fresh module for the activation function ``name`` (one of ``ACTIVATIONS``)."""
    return _ACTIVATION_MODULES[name]()


class SamePad(nn.Module):
    """Keras/TensorFlow ``same`` padding: the extra pixel, if any, goes to the bottom and the right."""

    def __init__(self, kernel: int, stride: int, value: float = 0.0):
        super().__init__()
        self.kernel, self.stride, self.value = kernel, stride, value

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        pads = [*same_pads(x.shape[-1], self.kernel, self.stride),  # F.pad wants (left, right, top, bottom)
                *same_pads(x.shape[-2], self.kernel, self.stride)]
        return F.pad(x, pads, value=self.value) if any(pads) else x


class AvgPoolSame(nn.Module):
    """Average pooling with Keras ``same`` padding: padded cells do not count in the average."""

    def __init__(self, size: int, stride: int):
        super().__init__()
        self.pad = SamePad(size, stride)
        self.pool = nn.AvgPool2d(size, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        ones = torch.ones_like(x[:1, :1])
        return self.pool(self.pad(x)) / self.pool(self.pad(ones))


class Padded(nn.Sequential):
    """A padding op then the layer op; ``weight``/``bias`` point at the inner layer's."""

    @property
    def weight(self) -> torch.Tensor:  # noqa: D102
        return self[1].weight

    @property
    def bias(self) -> torch.Tensor | None:  # noqa: D102
        return self[1].bias


class GlobalAvgPool(nn.Module):
    """The mean of each map: (N, C, H, W) -> (N, C), as Keras' ``GlobalAveragePooling2D``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return x.mean(dim=(2, 3))
