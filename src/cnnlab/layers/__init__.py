"""Layer kinds: one registered definition per kind (``conv``, ``dense``, ...), looked up by everything else.

| module | what |
|---|---|
| ``base`` | ``LayerKind`` (what a kind knows) and the registry: ``get``, ``names``, ``by_keras_class``, ``resolve`` |
| ``kinds`` | the definitions, one class each; add a kind here |
| ``ops`` | torch modules the kinds build beyond torch's own (``same`` padding, global pooling), activations |
| ``keras`` | reading a Keras layer's config and weights, shared by the kinds' conversions |
"""

from cnnlab.layers import kinds as _kinds  # noqa: F401  (registers the kinds)
from cnnlab.layers.base import LayerKind, by_keras_class, get, keras_classes, names, register, resolve
from cnnlab.layers.keras import KerasLayer
from cnnlab.layers.ops import ACTIVATIONS, activation_module

__all__ = ["LayerKind", "KerasLayer", "ACTIVATIONS", "activation_module", "by_keras_class", "get",
           "keras_classes", "names", "register", "resolve"]
