"""Reading a Keras layer's config and weights into cnnlab terms: the helpers every layer kind's conversion uses.

Keras is channels-last, torch channels-first; each kind converts its own kernels (see ``LayerKind.load_keras``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cnnlab.errors import CnnlabError
from cnnlab.lazy import lazy_module

torch = lazy_module("torch")  # only the weight copy needs it

ACTIVATIONS = ("relu", "tanh", "sigmoid", "elu", "gelu", "linear", "softmax")  # by their Keras names


@dataclass
class KerasLayer:
    """One layer as the file stores it: class, name, config and weights by Keras name (``kernel``, ``gamma``)."""

    class_name: str
    name: str
    config: dict[str, Any]
    weights: dict[str, np.ndarray] = field(default_factory=dict)


def check_data_format(layer: KerasLayer, where: str) -> None:
    """Refuse a channels-first layer."""
    fmt = layer.config.get("data_format") or "channels_last"
    if fmt != "channels_last":
        raise CnnlabError(f"{where}: layer {layer.name!r} uses data_format {fmt!r}; cnnlab reads channels_last models")


def square(layer: KerasLayer, key: str, default: int | None, where: str) -> int:
    """Return the one size of the layer's Keras ``[3, 3]``-style ``key`` (``default`` where it is missing or
    null); refuse unequal sizes."""
    value = layer.config.get(key)
    value = default if value is None else value
    values = value if isinstance(value, list) else [value]
    if not values or any(not isinstance(v, int) for v in values) or len(set(values)) != 1:
        raise CnnlabError(f"{where}: layer {layer.name!r} has {key} {value}; cnnlab supports equal sizes in both "
                          "directions only, e.g. [3, 3]")
    return int(values[0])


def padding(layer: KerasLayer, where: str) -> str:
    """Return the layer's padding, ``valid`` or ``same``."""
    value = str(layer.config.get("padding", "valid")).lower()
    if value not in ("valid", "same"):
        raise CnnlabError(f"{where}: layer {layer.name!r} has padding {value!r}; supported: valid, same")
    return value


def activation(value: Any, layer: KerasLayer, where: str) -> str:
    """Return the activation's name from a Keras config value (a name, None or a serialized built-in)."""
    if isinstance(value, dict):
        module = str(value.get("module") or "")
        if not module.startswith("keras") or not isinstance(value.get("config"), str):
            raise CnnlabError(f"{where}: layer {layer.name!r} has a custom activation "
                              f"({value.get('registered_name') or value.get('class_name')}); cnnlab never runs code "
                              f"from a model file; supported: {', '.join(ACTIVATIONS)}")
        value = value["config"]
    name = "linear" if value is None else str(value)
    if name not in ACTIVATIONS:
        raise CnnlabError(f"{where}: layer {layer.name!r} has activation {name!r}, which cnnlab does not support; "
                          f"supported: {', '.join(ACTIVATIONS)}")
    return name


def assign(target: torch.Tensor, weights: dict[str, np.ndarray], key: str, layer: str,
           to_torch: Callable[[np.ndarray], np.ndarray] = lambda a: a) -> None:
    """Copy the Keras array ``weights[key]``, turned into torch's layout by ``to_torch``, into ``target``."""
    if key not in weights:
        raise CnnlabError(f"layer {layer!r}: the file holds no {key}")
    value = weights[key]
    try:
        converted = to_torch(value)
    except (IndexError, ValueError):
        converted = None
    if converted is None or tuple(converted.shape) != tuple(target.shape):
        raise CnnlabError(f"layer {layer!r}: {key} has shape {tuple(value.shape)} in the file, which does not fit "
                          f"the layer ({tuple(target.shape)} in torch order)")
    with torch.no_grad():
        target.copy_(torch.from_numpy(np.ascontiguousarray(converted, dtype=np.float32)))


def assign_kernel(op: torch.nn.Module, weights: dict[str, np.ndarray], name: str,
                  to_torch: Callable[[np.ndarray], np.ndarray]) -> None:
    """Copy a kernel (converted by ``to_torch``) and, where the layer has one, its bias."""
    assign(op.weight, weights, "kernel", name, to_torch)
    if op.bias is not None:
        assign(op.bias, weights, "bias", name)
