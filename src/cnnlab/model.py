"""Build an ``nn.Module`` from the config's layer list; every layer has a unique name and a known shape."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from cnnlab import layers as kinds
from cnnlab import native
from cnnlab.layers import table
from cnnlab.layers.ops import activation_module
from cnnlab.layers.table import INPUT_SHAPE, LayerRow
from cnnlab.native import MaxPool2x2


class NamedLayer(nn.Module):
    """One config layer: its operation followed by its activation function.

    Its output is the layer's "activation" in the articles' sense: what the activation function produced.
    """

    def __init__(self, spec: dict[str, Any], op: nn.Module, activation: str = "linear"):
        super().__init__()
        self.spec = dict(spec)
        self.op = op
        self.act = activation_module(activation)

    @property
    def kind(self) -> str:
        """The config type of the layer: conv, maxpool, dense, ..."""
        return self.spec["type"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.act(self.op(x))


class CnnModel(nn.Module):
    """A sequential CNN of named layers.

    ``forward`` returns class scores before the final softmax (logits), which the loss needs for numerical
    stability; ``probabilities`` applies the softmax. ``activation(x, name)`` returns a named layer's output.
    """

    def __init__(self, layers: list[dict[str, Any]], init: str = "keras", input_shape: tuple = INPUT_SHAPE):
        super().__init__()
        self.input_shape = tuple(input_shape)
        self.layers = nn.ModuleDict()
        shapes = table.output_shapes(layers, self.input_shape)  # checks each layer's input before building any
        self.output_shapes: dict[str, tuple[int, ...]] = {spec["name"]: out for spec, out in zip(layers, shapes)}
        shape = self.input_shape
        for spec, out in zip(layers, shapes):
            kind = kinds.get(spec["type"])
            self.layers[spec["name"]] = NamedLayer(spec, kind.build(spec, shape), kind.activation(spec))
            shape = out
        self.num_classes = shape[0]
        self._plan = _forward_plan(self.layers)
        if init == "keras":
            keras_init_(self)

    @property
    def layer_names(self) -> list[str]:
        """The layer names in forward order."""
        return list(self.layers.keys())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the logits, shape (N, classes), for images (N, 1, 28, 28)."""
        return self._run(x)[0]

    @property
    def _last(self) -> str:
        return self.layer_names[-1]

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """Return class probabilities (N, classes)."""
        return torch.softmax(self(x), dim=1)

    def activation(self, x: torch.Tensor, name: str) -> torch.Tensor:
        """Run the layers up to and including ``name`` and return that layer's activation output."""
        self._check(name)
        return self._run(x, stop=name)[0]

    def outputs(self, x: torch.Tensor, names: list[str], logits: bool = False) -> tuple[torch.Tensor | None,
                                                                                      dict[str, torch.Tensor]]:
        """One forward pass for several views: (the logits if ``logits``, else None; each named layer's
        activation output). The pass stops after the last layer needed."""
        for name in names:
            self._check(name)
        if logits:
            out, got = self._run(x, wanted=names)
            return out, got
        last = max(names, key=self.layer_names.index)
        return None, self._run(x, wanted=names, stop=last)[1]

    def _check(self, name: str) -> None:
        table.check_layer_name(name, self.layer_names)

    def _run(self, x: torch.Tensor, wanted: list[str] | tuple[str, ...] = (),
             stop: str | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Run the layers in order: return (the logits, or the output of ``stop``; the ``wanted`` layers' outputs).

        A relu layer that feeds a max-pool runs with it as one step, pool first, unless its own output is
        wanted or is ``stop``: relu(maxpool(z)) == maxpool(relu(z)), values and gradients alike, and the relu
        then touches a quarter of the elements (the seed model trains about 1.5x faster); where a native kernel
        serves, the conv, its pool and the relu are one pass (first layer; 3x3 layers).
        """
        out: dict[str, torch.Tensor] = {}
        last = self._last
        for name, pool_name in self._plan:
            layer = self.layers[name]
            if pool_name is not None and name not in wanted and name != stop:
                pool = self.layers[pool_name].op
                fused = native.conv_max_pool(x, layer.op, relu=True) if isinstance(pool, MaxPool2x2) else None
                x = fused if fused is not None else layer.act(pool(layer.op(x)))
                finished = pool_name
            elif name == last:
                logits = layer.op(x)  # the last activation is softmax or linear: both are handled outside
                if name in wanted or name == stop:
                    out[name] = layer.act(logits)
                return (out[name] if name == stop else logits), out
            else:
                x = layer(x)
                finished = name
                if pool_name is not None:  # the relu layer's own output is needed: its pool runs after it
                    if _keep(out, name, x, wanted, stop):
                        return x, out
                    x = self.layers[pool_name](x)
                    finished = pool_name
            if _keep(out, finished, x, wanted, stop):
                return x, out
        return x, out

    def kernels(self, applies_to: str = "all") -> list[torch.Tensor]:
        """Return the kernel weights (no biases) of the dense layers, the conv layers or both."""
        return [layer.op.weight for layer in self.layers.values()
                if kinds.get(layer.kind).has_kernel and applies_to in ("all", layer.kind)]


def _keep(out: dict[str, torch.Tensor], name: str, x: torch.Tensor, wanted: Any, stop: str | None) -> bool:
    """Keep ``x`` as layer ``name``'s output where it is wanted; True where the run stops at ``name``."""
    if name in wanted:
        out[name] = x
    return name == stop


def _forward_plan(layers: nn.ModuleDict) -> list[tuple[str, str | None]]:
    """Pair each relu layer that feeds a max-pool with that pool, so ``forward`` can pool before the relu."""
    names = list(layers.keys())
    plan: list[tuple[str, str | None]] = []
    i = 0
    while i < len(names):
        layer = layers[names[i]]
        nxt = layers[names[i + 1]] if i + 1 < len(names) else None
        if layer.spec.get("activation") == "relu" and nxt is not None and nxt.kind == "maxpool":
            plan.append((names[i], names[i + 1]))
            i += 2
        else:
            plan.append((names[i], None))
            i += 1
    return plan


def build_model(layers: list[dict[str, Any]], init: str = "keras") -> CnnModel:
    """Build the model from resolved layer specs (see ``cnnlab.config.resolve_layers``).

    Args:
        layers: layer dicts with ``type``, ``name`` and the type's keys, all filled in.
        init: ``"keras"`` (glorot-uniform kernels, zero biases, as Keras) or ``"torch"`` (torch's defaults).

    Returns:
        The ``CnnModel``; shapes come from the layer kinds (``cnnlab.layers.table``), never typed in.
    """
    return CnnModel(layers, init=init)


def keras_init_(model: CnnModel) -> None:
    """Initialize as Keras does: glorot-uniform kernels, zero biases, BatchNorm gamma 1 and beta 0."""
    for layer in model.layers.values():
        kinds.get(layer.kind).keras_init(layer.op)


# ---------------------------------------------------------------------------------------------------------
# Layer table


def layer_table(model: CnnModel) -> list[LayerRow]:
    """Describe each layer: output shape per image, weight shapes (torch and Keras order), params, MACs."""
    rows = table.layer_table([layer.spec for layer in model.layers.values()], model.input_shape)
    for row in rows:  # trainable as the model is now: a caller may have frozen layers
        row.trainable = any(p.requires_grad for p in model.layers[row.name].parameters())
    return rows


def count_parameters(model: nn.Module) -> int:
    """Count parameters, each shared tensor once."""
    seen: dict[int, int] = {}
    for p in model.parameters():
        seen[id(p)] = p.numel()
    return sum(seen.values())


def format_table(model: CnnModel) -> str:
    """Return the layer table as aligned text with totals."""
    return table.format_rows(layer_table(model), model.input_shape)
