"""Activation output of any named layer: what the layer's activation function produced, per map.

No forward hooks: ``CnnModel.activation`` runs the layers up to the named one and returns its output, so nothing
stays attached to the model, and a later in-place op cannot change a value already returned. Every function
here leaves the model's train/eval mode as it found it and works through big inputs in chunks, on the fast
path (channels-last batches, the native kernels) where it applies; ``chunked_outputs`` serves several views
(several layers, the logits) from one pass.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import numpy as np
import torch

from cnnlab import layers as kinds
from cnnlab import native
from cnnlab.device import model_device
from cnnlab.errors import CnnlabError
from cnnlab.inspection import CHUNK
from cnnlab.layers.table import check_layer_name
from cnnlab.model import CnnModel


Prepare = Callable[[torch.Tensor | np.ndarray], torch.Tensor]


def check_layer(model: CnnModel, layer: str) -> str:
    """Return ``layer`` if the model has it, else raise a one-line error listing the valid names."""
    return check_layer_name(layer, model.layer_names)


def map_layers(model: CnnModel) -> list[str]:
    """The names of the conv, pooling and activation layers whose output is a stack of maps, in forward order."""
    return [name for name, layer in model.layers.items()
            if kinds.get(layer.kind).has_maps and len(model.output_shapes[name]) == 3]


def last_conv_layer(model: CnnModel) -> str:
    """The name of the last conv layer (Grad-CAM's default)."""
    convs = [name for name, layer in model.layers.items() if layer.kind == "conv"]
    if not convs:
        raise CnnlabError(f"the model has no conv layer; its layers: {', '.join(model.layer_names)}")
    return convs[-1]


@contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Put the model in eval mode (dropout off, batch-norm running statistics) and restore its mode after."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@contextmanager
def frozen_weights(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Let no parameter of the model require a gradient, and restore each one's setting after: a backward pass
    that wants only the input's gradient then computes no weight gradients at all."""
    params = list(model.parameters())
    wanted = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        yield model
    finally:
        for p, w in zip(params, wanted):
            p.requires_grad_(w)


def layer_activations(model: CnnModel, images: torch.Tensor | np.ndarray, layer: str,
                      prepare: Prepare | None = None, chunk: int = CHUNK) -> np.ndarray:
    """Return the activation output of ``layer`` for every image.

    Args:
        model: the network.
        images: normalized float images (N, 1, 28, 28); or, with ``prepare``, whatever it accepts (e.g. uint8
            (N, 28, 28)), normalized one chunk at a time.
        layer: a layer name of the model.
        prepare: turns a chunk of ``images`` into the model's input.
        chunk: images per forward pass.

    Returns:
        float32 (N, maps, H, W) for conv and pooling layers, (N, units) for flatten and dense layers.
    """
    check_layer(model, layer)
    out = np.empty((len(images), *model.output_shapes[layer]), dtype=np.float32)
    for start, part in chunked_activations(model, images, layer, prepare, chunk):
        out[start:start + len(part)] = part.numpy()
    return out


def map_means(model: CnnModel, images: torch.Tensor | np.ndarray, layer: str, prepare: Prepare | None = None,
              chunk: int = CHUNK) -> np.ndarray:
    """Return each map's mean activation per image: (N, maps); for flat layers the unit values (N, units).

    Only one chunk's full maps are in memory at a time.
    """
    check_layer(model, layer)
    out = np.empty((len(images), model.output_shapes[layer][0]), dtype=np.float32)
    for start, part in chunked_activations(model, images, layer, prepare, chunk):
        out[start:start + len(part)] = (part.mean(dim=(2, 3)) if part.ndim == 4 else part).numpy()
    return out


def forward_from(model: CnnModel, hidden: torch.Tensor, layer: str) -> torch.Tensor:
    """Continue the forward pass from the output of ``layer`` to the logits (as ``CnnModel.forward``)."""
    names = model.layer_names
    rest = names[names.index(check_layer(model, layer)) + 1:]
    x = hidden
    for name in rest:
        x = model.layers[name].op(x) if name == names[-1] else model.layers[name](x)
    return x


def scale_maps(maps: np.ndarray) -> np.ndarray:
    """Standardize each map and clip, as the articles' ``scale_img_vals`` option: ``clip(128 + 64 * z, 0, 255)``.

    Args:
        maps: (..., H, W) activations.

    Returns:
        float32 values in 0..255 of the same shape; a constant map stays at its value minus its mean, i.e. 0.
    """
    maps = np.asarray(maps, dtype=np.float32)
    centred = maps - maps.mean(axis=(-2, -1), keepdims=True)
    std = centred.std(axis=(-2, -1), keepdims=True)
    # The articles leave a constant map at 0 (they only shift and scale when std != 0).
    scaled = np.where(std > 0, centred / np.where(std > 0, std, 1) * 64 + 128, centred)
    return np.clip(scaled, 0, 255).astype(np.float32)


def chunked_activations(model: CnnModel, images: torch.Tensor | np.ndarray, layer: str,
                        prepare: Prepare | None = None, chunk: int = CHUNK) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(start, activations of images[start:start + chunk])``, in eval and inference mode.

    The model's train/eval mode is restored when the loop ends (or is abandoned).
    """
    for start, _, outputs in chunked_outputs(model, images, [layer], False, prepare, chunk):
        yield start, outputs[layer]


def chunked_outputs(model: CnnModel, images: torch.Tensor | np.ndarray, layers: list[str], logits: bool = False,
                    prepare: Prepare | None = None,
                    chunk: int = CHUNK) -> Iterator[tuple[int, torch.Tensor | None, dict[str, torch.Tensor]]]:
    """Yield ``(start, logits or None, {layer: activations})`` for each chunk of images, from one forward pass
    per chunk, in eval and inference mode (the model's mode is restored after).

    The passes run on the model's device: images that need no ``prepare`` go there once and are sliced there
    (prepared ones a chunk at a time); what is yielded is on the CPU.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    device = model_device(model)
    native.prepare_for(device)
    if prepare is None:
        images = torch.as_tensor(images).to(device)
    with eval_mode(model), torch.inference_mode():
        for start in range(0, len(images), chunk):
            part = images[start:start + chunk]
            x = prepare(part).to(device) if prepare is not None else part
            scores, outputs = model.outputs(x, layers, logits)
            yield start, None if scores is None else scores.cpu(), {k: v.cpu() for k, v in outputs.items()}
