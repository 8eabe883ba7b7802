"""Layer kinds: one registered definition per kind (``conv``, ``dense``, ...), looked up by everything else.

| module | what |
|---|---|
| ``base`` | ``LayerKind`` (what a kind knows) and the registry: ``get``, ``names``, ``by_keras_class``, ``resolve`` |
| ``kinds`` | the definitions, one class each; add a kind here |
| ``table`` | the layer table (shapes, weight shapes, params, MACs) of resolved specs, from the kinds alone |
| ``ops`` | torch modules the kinds build beyond torch's own (``same`` padding, global pooling), activations |
| ``keras`` | reading a Keras layer's config and weights, shared by the kinds' conversions |
| ``winograd_conv`` | ``WinogradConv2d``, built by ``conv`` for a 3x3 layer on 5x5 maps: Winograd F(3x3, 3x3) |

Importing the package does not import torch: ``ops``, ``winograd_conv`` (and torch) load when a kind first builds a
module.
"""

from cnnlab.layers import kinds as _kinds  # noqa: F401  (registers the kinds)
from cnnlab.layers.base import LayerKind, by_keras_class, get, keras_classes, names, register, resolve
from cnnlab.layers.keras import ACTIVATIONS, KerasLayer

__all__ = ["LayerKind", "KerasLayer", "ACTIVATIONS", "by_keras_class", "get", "keras_classes", "names", "register",
           "resolve"]
