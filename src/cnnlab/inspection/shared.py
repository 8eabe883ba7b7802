"""One pass over a set of images for several views: logits, per-map means of several layers, class sums.

The evaluation needs the logits of the test set, each filter-pattern picture the test images' map means of its
layer, the class patterns the per-class sums of one layer's maps and the network's accuracy. ``SharedPass``
computes what is asked for and not yet at hand in one forward pass (the fast path, in chunks) and keeps it, so
a report runs over the test set once instead of once per view.
"""

from __future__ import annotations

import numpy as np
import torch

from cnnlab.inspection.activations import CHUNK, check_layer, chunked_outputs
from cnnlab.model import CnnModel


class SharedPass:
    """What a model makes of fixed images ``x`` with labels ``y``, computed on demand and kept.

    Args:
        model: the network.
        x: normalized images (N, 1, 28, 28).
        y: their labels (N,).
        chunk: images per forward pass.
        num_classes: the rows of the per-class sums (default: the model's classes).
    """

    def __init__(self, model: CnnModel, x: torch.Tensor, y: torch.Tensor | np.ndarray, chunk: int = CHUNK,
                 num_classes: int | None = None):
        self.model, self.x, self.chunk = model, x, chunk
        self.num_classes = num_classes or model.num_classes
        self.labels = torch.as_tensor(np.asarray(y), dtype=torch.int64)
        self._logits: torch.Tensor | None = None
        self._means: dict[str, np.ndarray] = {}
        self._sums: dict[str, torch.Tensor] = {}

    def want(self, means: list[str] | tuple[str, ...] = (), class_sums: list[str] | tuple[str, ...] = (),
             logits: bool = False) -> None:
        """Compute, in one pass, whichever of these is not at hand yet: the per-map means of the layers in
        ``means``, the per-class sums of the activations of the layers in ``class_sums``, the logits."""
        new_means = [check_layer(self.model, layer) for layer in dict.fromkeys(means) if layer not in self._means]
        new_sums = [check_layer(self.model, layer) for layer in dict.fromkeys(class_sums) if layer not in self._sums]
        new_logits = logits and self._logits is None
        layers = sorted({*new_means, *new_sums}, key=self.model.layer_names.index)
        if not layers and not new_logits:
            return
        n, k, shapes = len(self.labels), self.model.num_classes, self.model.output_shapes
        got_means = {layer: np.empty((n, shapes[layer][0]), dtype=np.float32) for layer in new_means}
        got_sums = {layer: torch.zeros((self.num_classes, *shapes[layer]), dtype=torch.float64)
                    for layer in new_sums}
        parts = []
        for start, scores, outputs in chunked_outputs(self.model, self.x, layers, new_logits, chunk=self.chunk):
            if scores is not None:
                parts.append(scores.float())
            for layer, mean in got_means.items():
                acts = outputs[layer]
                mean[start:start + len(acts)] = (acts.mean(dim=(2, 3)) if acts.ndim == 4 else acts).numpy()
            for layer, sums in got_sums.items():
                acts = outputs[layer]
                sums.index_add_(0, self.labels[start:start + len(acts)], acts.double())
        if new_logits:
            self._logits = torch.cat(parts) if parts else torch.zeros(0, k)
        self._means.update(got_means)
        self._sums.update(got_sums)

    def logits(self) -> torch.Tensor:
        """The logits (N, classes)."""
        self.want(logits=True)
        return self._logits

    def means(self, layer: str) -> np.ndarray:
        """Each map's mean activation of ``layer`` per image, (N, maps); the unit values (N, units) of a flat one."""
        self.want(means=[layer])
        return self._means[layer]

    def class_sums(self, layer: str) -> torch.Tensor:
        """Per class, the sum of ``layer``'s activations over its images: float64 (classes, *output shape)."""
        self.want(class_sums=[layer])
        return self._sums[layer]
