"""The layer kinds. Adding one is one class here, registered with ``@register``, plus its test case.

Each kind owns its config keys and checks, its output and parameter shapes, its torch module, its label and
Keras names, its MAC count, whether its maps are worth inspecting, its Keras initialization and its Keras weight
conversion (see ``LayerKind``).

torch, the kinds' own ops and the native kernels are lazy modules here: they are imported when a kind first
builds or initializes a module, so config checks and the layer table (``cnnlab summary``) never import torch.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from cnnlab import winograd
from cnnlab.errors import CnnlabError
from cnnlab.layers import keras as kr
from cnnlab.layers.base import LayerKind, register, window_size
from cnnlab.layers.keras import ACTIVATIONS
from cnnlab.lazy import lazy_module
from cnnlab.schema import REQUIRED, Key, boolean, choice, integer, number

nn = lazy_module("torch.nn")
ops = lazy_module("cnnlab.layers.ops")
native = lazy_module("cnnlab.native")
winograd_conv = lazy_module("cnnlab.layers.winograd_conv")

_PADDING = Key("valid", choice("valid", "same"))
_USE_BIAS = Key(True, boolean())


def _activation(default: Any) -> Key:
    return Key(default, choice(*ACTIVATIONS))


class _WithKernel(LayerKind):
    """A kind with a kernel and an optional bias: glorot-uniform init, one MAC per kernel weight per output."""

    has_kernel = True

    def param_shapes(self, spec, shape):  # noqa: D102 - documented on LayerKind
        kernel = self._kernel_shape(spec, shape)
        return [kernel, kernel[:1]] if spec["use_bias"] else [kernel]

    def _kernel_shape(self, spec: dict[str, Any], shape: tuple[int, ...]) -> tuple[int, ...]:
        raise NotImplementedError

    def macs(self, spec, in_shape, out_shape):  # noqa: D102
        # each output value costs one multiply-add per kernel weight feeding it
        return math.prod(out_shape) * math.prod(self._kernel_shape(spec, in_shape)[1:])

    def keras_init(self, op):  # noqa: D102
        nn.init.xavier_uniform_(op.weight)  # fan_in = in*kh*kw, fan_out = out*kh*kw: Keras' glorot_uniform
        if op.bias is not None:
            nn.init.zeros_(op.bias)

    def keras_weight_names(self, config):  # noqa: D102
        return ["kernel", "bias"] if config.get("use_bias", True) else ["kernel"]


@register
class Conv(_WithKernel):
    """A 2-D convolution (Keras ``Conv2D``) followed by its activation."""

    name, label, keras_name, keras_classes = "conv", "Conv2D", "conv2d", ("Conv2D",)
    keys = {"filters": Key(REQUIRED, integer(1)), "kernel": Key(3, integer(1)), "stride": Key(1, integer(0)),
            "padding": _PADDING, "activation": _activation("relu"), "use_bias": _USE_BIAS}
    needs, has_maps = "maps", True

    def output_shape(self, spec, shape):  # noqa: D102 - documented on LayerKind
        k, s, same = spec["kernel"], max(spec["stride"], 1), spec["padding"] == "same"
        return (spec["filters"], *(window_size(size, k, s, same) for size in shape[1:]))

    def _kernel_shape(self, spec, shape):
        return (spec["filters"], shape[0], spec["kernel"], spec["kernel"])

    def build(self, spec, shape):  # noqa: D102
        k, s = spec["kernel"], max(spec["stride"], 1)
        padded = [size + (k - 1 if spec["padding"] == "same" else 0) for size in shape[1:]]
        plain = not (winograd.fits(k, s, shape[0]) and padded == [winograd.SPAN] * 2)  # (see WinogradConv2d)
        conv = (nn.Conv2d if plain else winograd_conv.WinogradConv2d)(shape[0], spec["filters"], k, stride=s,
                                                                       bias=spec["use_bias"])
        if spec["padding"] == "same":
            if s == 1 and k % 2 == 1:
                conv.padding = (k // 2, k // 2)  # symmetric: same result, no extra pad op
                return conv
            return ops.Padded(ops.SamePad(k, s), conv)
        return conv

    def from_keras(self, layer, where):  # noqa: D102
        cfg = layer.config
        if kr.square(layer, "dilation_rate", 1, where) != 1 or cfg.get("groups", 1) != 1:
            raise CnnlabError(f"{where}: layer {layer.name!r} uses dilation or groups, which cnnlab does not support")
        return {"type": "conv", "name": layer.name, "filters": int(cfg["filters"]),
                "kernel": kr.square(layer, "kernel_size", None, where),
                "stride": kr.square(layer, "strides", 1, where),
                "padding": kr.padding(layer, where), "activation": kr.activation(cfg.get("activation"), layer, where),
                "use_bias": bool(cfg.get("use_bias", True))}

    def load_keras(self, op, weights, name, perm):  # noqa: D102
        kr.assign_kernel(op, weights, name, lambda k: k.transpose(3, 2, 0, 1))  # (kh, kw, in, out) -> (out, in, kh, kw)


class _Pool(LayerKind):
    """Max or average pooling over ``size`` x ``size`` windows (stride 0 = the size)."""

    keys = {"size": Key(2, integer(1)), "stride": Key(0, integer(0)), "padding": _PADDING}
    needs, has_maps = "maps", True

    def output_shape(self, spec, shape):  # noqa: D102
        size, same = spec["size"], spec["padding"] == "same"
        return (shape[0], *(window_size(n, size, spec["stride"] or size, same) for n in shape[1:]))

    def build(self, spec, shape):  # noqa: D102
        size = spec["size"]
        return self._pool(size, spec["stride"] or size, spec["padding"] == "same")

    def _pool(self, size: int, stride: int, same: bool) -> nn.Module:
        raise NotImplementedError

    def from_keras(self, layer, where):  # noqa: D102
        size = kr.square(layer, "pool_size", 2, where)
        return {"type": self.name, "name": layer.name, "size": size,
                "stride": kr.square(layer, "strides", size, where), "padding": kr.padding(layer, where)}


@register
class MaxPool(_Pool):
    """Max pooling (Keras ``MaxPooling2D``): the largest value of each window.

    2x2 windows at stride 2 without padding, the seed model's, use the native kernel where it serves (float32,
    channels-last; the same values and gradients as torch's). ``same`` padding pads with -inf at the bottom and
    the right, as TensorFlow does, so a padded cell never wins.
    """

    name, label, keras_name, keras_classes = "maxpool", "MaxPool2D", "max_pooling2d", ("MaxPooling2D",)

    def _pool(self, size, stride, same):
        if size == 2 and stride == 2 and not same:
            return native.MaxPool2x2()  # the common case, with a native kernel for channels-last float32
        pool = nn.MaxPool2d(size, stride)
        return ops.Padded(ops.SamePad(size, stride, value=-math.inf), pool) if same else pool


@register
class AvgPool(_Pool):
    """Average pooling (Keras ``AveragePooling2D``): the mean of each window.

    With ``same`` padding, the padded cells at the bottom and the right do not count in the mean (each window
    averages the cells it covers), as in TensorFlow.
    """

    name, label, keras_name, keras_classes = "avgpool", "AvgPool2D", "average_pooling2d", ("AveragePooling2D",)

    def _pool(self, size, stride, same):
        return ops.AvgPoolSame(size, stride) if same else nn.AvgPool2d(size, stride)


@register
class Flatten(LayerKind):
    """Maps (C, H, W) to features (C*H*W,), in torch's channel-first order."""

    name, label, keras_name, keras_classes = "flatten", "Flatten", "flatten", ("Flatten",)
    flattens, elementwise = True, True

    def output_shape(self, spec, shape):  # noqa: D102
        return (math.prod(shape),)

    def build(self, spec, shape):  # noqa: D102
        return nn.Flatten()

    def from_keras(self, layer, where):  # noqa: D102
        return {"type": "flatten", "name": layer.name}


@register
class Dense(_WithKernel):
    """A fully connected layer (Keras ``Dense``) followed by its activation."""

    name, label, keras_name, keras_classes = "dense", "Dense", "dense", ("Dense",)
    keys = {"units": Key(REQUIRED, integer(1)), "activation": _activation("relu"), "use_bias": _USE_BIAS}
    needs = "flat"

    def output_shape(self, spec, shape):  # noqa: D102
        return (spec["units"],)

    def _kernel_shape(self, spec, shape):
        return (spec["units"], shape[0])

    def build(self, spec, shape):  # noqa: D102
        return nn.Linear(shape[0], spec["units"], bias=spec["use_bias"])

    def from_keras(self, layer, where):  # noqa: D102
        cfg = layer.config
        return {"type": "dense", "name": layer.name, "units": int(cfg["units"]),
                "activation": kr.activation(cfg.get("activation"), layer, where),
                "use_bias": bool(cfg.get("use_bias", True))}

    def load_keras(self, op, weights, name, perm):  # noqa: D102
        kr.assign_kernel(op, weights, name, lambda k: (k if perm is None else k[perm]).T)  # (in, out) -> (out, in)


@register
class Dropout(LayerKind):
    """Drops a ``rate`` share of its inputs while training (Keras ``Dropout``)."""

    name, label, keras_name, keras_classes = "dropout", "Dropout", "dropout", ("Dropout",)
    keys = {"rate": Key(REQUIRED, number(0.0, 1.0, high_open=True))}
    elementwise = True

    def build(self, spec, shape):  # noqa: D102
        return nn.Dropout(spec["rate"])

    def from_keras(self, layer, where):  # noqa: D102
        return {"type": "dropout", "name": layer.name, "rate": float(layer.config.get("rate", 0.0))}


@register
class BatchNorm(LayerKind):
    """Batch normalization over channels (maps) or features (flat), with Keras' momentum convention."""

    name, label, keras_name, keras_classes = "batchnorm", "BatchNorm", "batch_normalization", ("BatchNormalization",)
    keys = {"momentum": Key(0.99, number(0.0, 1.0, high_open=True)), "epsilon": Key(0.001, number(0.0))}
    elementwise = True

    def param_shapes(self, spec, shape):  # noqa: D102
        return [shape[:1], shape[:1]]  # gamma and beta per channel (maps) or feature (flat)

    def build(self, spec, shape):  # noqa: D102
        # Keras' momentum weighs the old running value; torch's weighs the new batch.
        norm = nn.BatchNorm2d if len(shape) == 3 else nn.BatchNorm1d
        return norm(shape[0], eps=spec["epsilon"], momentum=1.0 - spec["momentum"])

    def keras_init(self, op):  # noqa: D102
        nn.init.ones_(op.weight)
        nn.init.zeros_(op.bias)

    def from_keras(self, layer, where):  # noqa: D102
        cfg = layer.config
        axis = cfg.get("axis", -1)
        axis = axis[0] if isinstance(axis, list) and len(axis) == 1 else axis
        if axis not in (-1, 3):  # the channels axis of (N, H, W, C); -1 is also the features axis of (N, F)
            raise CnnlabError(f"{where}: layer {layer.name!r} normalizes axis {axis}; cnnlab supports the channels "
                              "axis (-1) only")
        return {"type": "batchnorm", "name": layer.name, "momentum": float(cfg.get("momentum", 0.99)),
                "epsilon": float(cfg.get("epsilon", 0.001))}

    def keras_weight_names(self, config):  # noqa: D102
        return (["gamma"] if config.get("scale", True) else []) + (["beta"] if config.get("center", True) else []) \
            + ["moving_mean", "moving_variance"]

    def load_keras(self, op, weights, name, perm):  # noqa: D102
        n = op.num_features
        defaults = {"gamma": np.ones(n, np.float32), "beta": np.zeros(n, np.float32)}  # scale / center off
        weights = {**defaults, **weights}
        reorder = (lambda a: a[perm]) if perm is not None else (lambda a: a)
        for key, target in (("gamma", op.weight), ("beta", op.bias), ("moving_mean", op.running_mean),
                            ("moving_variance", op.running_var)):
            kr.assign(target, weights, key, name, reorder)


@register
class Activation(LayerKind):
    """A standalone activation function, as Keras' ``Activation`` layer."""

    name, label, keras_name, keras_classes = "activation", "Activation", "activation", ("Activation",)
    keys = {"activation": _activation(REQUIRED)}
    has_maps, elementwise = True, True

    def build(self, spec, shape):  # noqa: D102
        return nn.Identity()

    def from_keras(self, layer, where):  # noqa: D102
        return {"type": "activation", "name": layer.name,
                "activation": kr.activation(layer.config.get("activation"), layer, where)}


@register
class GlobalAveragePool(LayerKind):
    """The mean of each map (Keras ``GlobalAveragePooling2D``): maps (C, H, W) become features (C,)."""

    name, label, keras_name = "globalavgpool", "GlobalAvgPool2D", "global_average_pooling2d"
    keras_classes = ("GlobalAveragePooling2D",)
    needs = "maps"

    def output_shape(self, spec, shape):  # noqa: D102
        return shape[:1]

    def build(self, spec, shape):  # noqa: D102
        return ops.GlobalAvgPool()

    def from_keras(self, layer, where):  # noqa: D102
        if layer.config.get("keepdims"):
            raise CnnlabError(f"{where}: layer {layer.name!r} keeps the pooled dimensions (keepdims); cnnlab's "
                              "global average pooling gives flat features: save it with keepdims=False")
        return {"type": "globalavgpool", "name": layer.name}
