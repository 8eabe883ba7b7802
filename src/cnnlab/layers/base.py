"""What a layer kind is, and the registry that finds kinds by config type or Keras class.

Torch-free: a kind's schema, shapes, parameter shapes and MACs need no torch (``cnnlab summary`` and config
checks run without importing it); only ``build`` and the weight methods touch torch modules.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from cnnlab.errors import CnnlabError
from cnnlab.layers.keras import KerasLayer
from cnnlab.schema import Key, check_choice, expected_table, resolve_table, text

if TYPE_CHECKING:
    import numpy as np
    from torch import nn


class LayerKind:
    """One kind of layer (``conv``, ``dense``, ...): everything cnnlab knows about it, in one place.

    Class attributes say what the kind is; methods say how to build, count and convert it. A subclass sets
    the attributes it needs and overrides the methods that differ from these defaults, then registers an
    instance with ``register``. ``output_shape``, ``param_shapes`` and ``macs`` work from the spec alone
    (no torch); ``tests/test_layers.py`` checks them against the built module.

    Attributes:
        name: the config ``type``.
        label: the layer table's type column (``Conv2D``).
        keras_name: Keras' name prefix, used for unnamed layers (``conv2d`` -> ``conv2d_1``).
        keras_classes: the Keras classes this kind imports from.
        keys: the config keys besides ``type`` and ``name``: default (or ``REQUIRED``) and rule.
        needs: the input it takes: ``"maps"`` (C, H, W), ``"flat"`` (F,) or ``"any"``.
        has_maps: its output is maps worth inspecting (it makes maps, not just passes them on).
        has_kernel: it has a kernel (``op.weight``) that initializers and regularizers treat as one.
        elementwise: each output feature comes from the same input feature (a Keras flatten order passes it).
        flattens: it turns maps into features in Keras' (H, W, C) order.
    """

    name: ClassVar[str] = ""
    label: ClassVar[str] = ""
    keras_name: ClassVar[str] = ""
    keras_classes: ClassVar[tuple[str, ...]] = ()
    keys: ClassVar[Mapping[str, Key]] = {}
    needs: ClassVar[str] = "any"
    has_maps: ClassVar[bool] = False
    has_kernel: ClassVar[bool] = False
    elementwise: ClassVar[bool] = False
    flattens: ClassVar[bool] = False

    def build(self, spec: dict[str, Any], shape: tuple[int, ...]) -> nn.Module:
        """Return the torch module of a resolved layer ``spec`` that gets inputs of ``shape`` (one image)."""
        raise NotImplementedError

    def activation(self, spec: dict[str, Any]) -> str:
        """The activation function that follows the op (``linear`` where the kind has none)."""
        return spec.get("activation", "linear")

    def output_shape(self, spec: dict[str, Any], shape: tuple[int, ...]) -> tuple[int, ...]:
        """The output shape (one image) for inputs of ``shape``; a size below 1 means the input is too small."""
        return shape

    def param_shapes(self, spec: dict[str, Any], shape: tuple[int, ...]) -> list[tuple[int, ...]]:
        """The shapes of the built module's parameters, in torch's order (the kernel first, where it has one)."""
        return []

    def macs(self, spec: dict[str, Any], in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> int:
        """Multiply-adds per image."""
        return 0

    def keras_init(self, op: nn.Module) -> None:
        """Initialize the op as Keras would (nothing to do for a kind without weights)."""

    def from_keras(self, layer: KerasLayer, where: str) -> dict[str, Any]:
        """Return the config spec of a Keras layer of one of ``keras_classes`` (its data format already checked)."""
        raise NotImplementedError

    def keras_weight_names(self, config: dict[str, Any]) -> list[str]:
        """The Keras layer's variables in the order Keras creates (and numbers) them."""
        return []

    def load_keras(self, op: nn.Module, weights: dict[str, np.ndarray], name: str, perm: np.ndarray | None) -> None:
        """Copy Keras weights into the op; ``perm`` reorders flat features from Keras' order to torch's."""

    def check_input(self, shape: tuple[int, ...], where: str) -> None:
        """Refuse an input of the wrong rank with what to do instead."""
        if self.needs == "maps" and len(shape) != 3:
            raise CnnlabError(f"{where}: a {self.name} layer needs image maps (C, H, W) as input, but gets {shape}; "
                              "put it before the flatten layer")
        if self.needs == "flat" and len(shape) != 1:
            raise CnnlabError(f"{where}: a {self.name} layer needs a flat input but gets maps of shape {shape}; "
                              "add a flatten layer before it")


def window_size(size: int, window: int, stride: int, same: bool) -> int:
    """The output size of a sliding window along one axis: Keras' ``same`` (ceil) or ``valid`` padding."""
    return math.ceil(size / stride) if same else (size - window) // stride + 1


def same_pads(size: int, window: int, stride: int) -> tuple[int, int]:
    """Keras/TensorFlow ``same`` padding of one axis: (before, after), the extra cell, if any, after."""
    total = max((math.ceil(size / stride) - 1) * stride + window - size, 0)
    return total // 2, total - total // 2


_KINDS: dict[str, LayerKind] = {}


def register(cls: type[LayerKind]) -> type[LayerKind]:
    """Class decorator: register one instance of a ``LayerKind`` subclass under its ``name``."""
    if cls.name in _KINDS:
        raise ValueError(f"layer kind {cls.name!r} is registered twice")
    _KINDS[cls.name] = cls()
    return cls


def names() -> list[str]:
    """The registered kinds' config types, in registration order."""
    return list(_KINDS)


def get(name: str) -> LayerKind:
    """Return the registered kind of config type ``name``."""
    return _KINDS[name]


def by_keras_class(class_name: str) -> LayerKind | None:
    """Return the kind that imports Keras layers of ``class_name``, or None."""
    return next((kind for kind in _KINDS.values() if class_name in kind.keras_classes), None)


def keras_classes() -> list[str]:
    """Every Keras layer class some kind imports."""
    return [cls for kind in _KINDS.values() for cls in kind.keras_classes]


def resolve(layer: Any, path: str) -> dict[str, Any]:
    """Check one layer table against its kind and return it as ``{"type", "name", ...every key}``.

    ``name`` is "" where the user gave none (``cnnlab.config.resolve_layers`` names it).
    """
    if not isinstance(layer, Mapping):
        raise expected_table(path, layer, "a table with a 'type' key")
    kind = check_choice(f"{path}.type", layer.get("type"), names())
    keys = {"name": Key("", text()), **_KINDS[kind].keys}
    values = resolve_table(path, layer, keys, what=f"not a key of a {kind} layer", owner=f"a {kind} layer",
                           skip=("type",))
    return {"type": kind, **values}
