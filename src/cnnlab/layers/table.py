"""The layer table of a model's resolved layer specs: shapes, weight shapes, parameters and MACs, without torch.

Every figure comes from the layer kinds' ``output_shape``, ``param_shapes`` and ``macs``, so ``cnnlab summary``
and a model's build agree on shapes without building a torch module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable

from cnnlab.errors import CnnlabError
from cnnlab.layers.base import get

INPUT_SHAPE = (1, 28, 28)  # (C, H, W) of one MNIST image


@dataclass
class LayerRow:
    """One row of the layer table."""

    name: str
    type: str
    output_shape: tuple[int, ...]
    torch_weight_shape: tuple[int, ...] | None
    keras_weight_shape: tuple[int, ...] | None
    params: int
    macs: int
    trainable: bool


def output_shapes(layers: list[dict[str, Any]], input_shape: tuple[int, ...] = INPUT_SHAPE,
                  ) -> list[tuple[int, ...]]:
    """Each layer's output shape (one image), checking that each layer gets the input rank and size it needs.

    Raises:
        CnnlabError: a layer gets maps where it needs features (or the reverse), or an input too small for it.
    """
    shapes, shape = [], tuple(input_shape)
    for i, spec in enumerate(layers):
        where = f"model.layers[{i}] ({spec['name']})"
        kind = get(spec["type"])
        kind.check_input(shape, where)
        out = tuple(kind.output_shape(spec, shape))
        if min(out) < 1:
            raise CnnlabError(f"{where}: its input {shape} is too small for it; use 'same' padding, smaller kernels "
                              "or fewer pooling layers")
        shapes.append(out)
        shape = out
    return shapes


def layer_table(layers: list[dict[str, Any]], input_shape: tuple[int, ...] = INPUT_SHAPE) -> list[LayerRow]:
    """Describe each layer: output shape per image, weight shapes (torch and Keras order), params, MACs."""
    rows = []
    shape = tuple(input_shape)
    for spec, out in zip(layers, output_shapes(layers, input_shape)):
        kind = get(spec["type"])
        params = kind.param_shapes(spec, shape)
        torch_shape = params[0] if kind.has_kernel else None
        count = sum(math.prod(p) for p in params)
        rows.append(LayerRow(name=spec["name"], type=kind.label, output_shape=out, torch_weight_shape=torch_shape,
                             keras_weight_shape=_keras_shape(torch_shape), params=count,
                             macs=kind.macs(spec, shape, out), trainable=count > 0))
        shape = out
    return rows


def check_layer_name(layer: str, names: Iterable[str]) -> str:
    """Return ``layer`` if it is one of a model's layer ``names`` (in forward order), else raise a one-line error
    listing the valid names."""
    names = list(names)
    if layer not in names:
        raise CnnlabError(f"no layer named {layer!r}; valid names: {', '.join(names)}")
    return layer


def _keras_shape(shape: tuple[int, ...] | None) -> tuple[int, ...] | None:
    if shape is None:
        return None
    if len(shape) == 4:  # torch (out, in, kh, kw) -> Keras (kh, kw, in, out)
        return (shape[2], shape[3], shape[1], shape[0])
    return (shape[1], shape[0])  # torch Linear (out, in) -> Keras Dense kernel (in, out)


def format_rows(rows: list[LayerRow], input_shape: tuple[int, ...] = INPUT_SHAPE) -> str:
    """Return the layer table as aligned text with totals."""
    head = ["layer", "type", "output", "weights (torch)", "weights (keras)", "params", "MACs", "trainable"]
    body = [[r.name, r.type, _shape(r.output_shape), _shape(r.torch_weight_shape), _shape(r.keras_weight_shape),
             f"{r.params:,}", f"{r.macs:,}", "yes" if r.trainable else "-"] for r in rows]
    total = sum(r.params for r in rows)
    trainable = sum(r.params for r in rows if r.trainable)
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    right = {5, 6}

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    out = [line(head), "  ".join("-" * w for w in widths), *(line(b) for b in body)]
    out.append(f"input {_shape(input_shape)}; total parameters {total:,} (trainable {trainable:,}); "
               f"multiply-adds per image {sum(r.macs for r in rows):,}")
    return "\n".join(x.rstrip() for x in out)


def format_table(layers: list[dict[str, Any]], input_shape: tuple[int, ...] = INPUT_SHAPE) -> str:
    """Return the layer table of resolved layer specs as aligned text with totals (what ``cnnlab summary`` prints)."""
    return format_rows(layer_table(layers, input_shape), input_shape)


def _shape(shape: tuple[int, ...] | None) -> str:
    return "-" if shape is None else "(" + ", ".join(str(s) for s in shape) + ")"
