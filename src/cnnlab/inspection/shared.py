"""One pass over a set of images for several views: logits, per-map means of several layers, class sums.

The evaluation needs the logits of the test set, each filter-pattern picture the test images' map means of its
layer, the class patterns the per-class sums of one layer's maps and the network's accuracy. ``SharedPass``
computes what is asked for and not yet at hand in one forward pass (the fast path, in chunks) and keeps it, so
a report runs over the test set once instead of once per view. Given a ``Keep``, it also keeps each result in
the run folder's cache and reads it back there: a later command that finds everything it needs kept loads
neither the model nor torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import numpy as np

from cnnlab.inspection import CHUNK, cache
from cnnlab.layers.table import check_layer_name
from cnnlab.numpy_model import map_means_of

if TYPE_CHECKING:
    from cnnlab.model import CnnModel
    from cnnlab.numpy_model import NumpyModel

KIND = "testpass"  # the cache folder: <run>/cache/testpass/


@dataclass(frozen=True)
class Keep:
    """Where a pass keeps its results: the run folder, and what they depend on (the weights' hash, the images'
    hash, the normalization, ...), as strings: other weights or images miss the cache."""

    run_dir: Path
    parts: tuple[str, ...]

    def path(self, what: str, layer: str) -> Path:
        """The file of one result: ``what`` (``logits``, ``means``, ``sums``) of ``layer``."""
        return cache.cache_path(self.run_dir, KIND, f"{what}-{layer}", list(self.parts))

    def put(self, what: str, layer: str, array: np.ndarray) -> None:
        """Keep one result (``layer`` is ``"model"`` for the logits)."""
        cache.keep_arrays(self.path(what, layer), {what: array})


def test_keep(run_dir: str | Path, weights: str, images: str, normalizer: dict[str, Any]) -> Keep:
    """Where a run's test pass is kept: keyed by the weights' hash (``cache.weights_hash``), ``images`` (the
    ``cache.arrays_hash`` of the raw test images and their labels, in the run's order) and the normalizer (its
    ``to_dict()``)."""
    return Keep(Path(run_dir), (weights, images, json.dumps(normalizer)))


class SharedPass:
    """What a model makes of fixed images ``x`` with labels ``y``, computed on demand and kept.

    Args:
        model: the network, or a function that returns it, called only when something must be computed (then
            ``shapes`` names the layers).
        x: normalized images (N, 1, 28, 28); with ``prepare``, whatever it accepts (raw uint8 (N, 28, 28)),
            normalized a chunk at a time.
        y: their labels (N,).
        chunk: images per forward pass.
        num_classes: the rows of the per-class sums (default: the model's classes).
        shapes: layer name -> output shape without the batch, in forward order (default: the model's).
        prepare: turns a chunk of ``x`` into the model's input.
        keep: where results are kept between processes (default: only in this object).
        numpy_model: returns the model's torch-free inference (``cnnlab.numpy_model.NumpyModel``) or None
            where it does not serve; when it serves, every pass runs there (so the results kept are the same
            bits whichever process computes them) and torch is never imported.
        numpy_prepare: turns a chunk of ``x`` into the numpy model's input (default: ``prepare``).
    """

    def __init__(self, model: CnnModel | Callable[[], CnnModel], x: Any, y: Any, chunk: int = CHUNK,
                 num_classes: int | None = None, shapes: dict[str, tuple[int, ...]] | None = None,
                 prepare: Callable[[Any], Any] | None = None, keep: Keep | None = None,
                 numpy_model: Callable[[], NumpyModel | None] | None = None,
                 numpy_prepare: Callable[[Any], np.ndarray] | None = None):
        self._model = model if hasattr(model, "output_shapes") else None
        self._load = model if self._model is None else None
        self.x, self.chunk, self.prepare, self.keep = x, chunk, prepare, keep
        self._numpy_model = numpy_model
        self.numpy_prepare = numpy_prepare or prepare
        if shapes is None:
            shapes = {name: tuple(self.model.output_shapes[name]) for name in self.model.layer_names}
        self.shapes = {name: tuple(shape) for name, shape in shapes.items()}
        self.num_classes = num_classes or self.model.num_classes
        labels = y.detach().cpu().numpy() if hasattr(y, "detach") else np.asarray(y)
        self.labels = labels.astype(np.int64)
        self._kept: dict[tuple[str, str], np.ndarray] = {}

    @property
    def model(self) -> CnnModel:
        """The network (loaded on first use where it was given as a function)."""
        if self._model is None:
            self._model = self._load()
        return self._model

    def want(self, means: list[str] | tuple[str, ...] = (), class_sums: list[str] | tuple[str, ...] = (),
             logits: bool = False) -> None:
        """Compute, in one pass, whichever of these is neither at hand nor kept in the run folder: the per-map
        means of the layers in ``means``, the per-class sums of the activations of the layers in ``class_sums``,
        the logits."""
        asked = ([("means", self.check(layer)) for layer in dict.fromkeys(means)]
                 + [("sums", self.check(layer)) for layer in dict.fromkeys(class_sums)]
                 + ([("logits", "model")] if logits else []))
        missing = [item for item in asked if item not in self._kept and not self._read(item)]
        if missing:
            computed = self._compute(missing)
            self._kept.update(computed)
            if self.keep is not None:
                for (what, layer), array in computed.items():
                    self.keep.put(what, layer, array)

    def has(self, what: str, layer: str = "model") -> bool:
        """Whether ``what`` (``logits``, ``means``, ``sums``) of ``layer`` (``"model"`` for the logits) is at hand
        or kept in the run folder (it is then read), without computing it."""
        item = (what, layer)
        return item in self._kept or self._read(item)

    def check(self, layer: str) -> str:
        """Return ``layer`` if the model has it, else raise a one-line error listing the valid names."""
        return check_layer_name(layer, self.shapes)

    def logits(self) -> np.ndarray:
        """The logits (N, classes), float32."""
        self.want(logits=True)
        return self._kept[("logits", "model")]

    def means(self, layer: str) -> np.ndarray:
        """Each map's mean activation of ``layer`` per image, (N, maps); the unit values (N, units) of a flat one."""
        self.want(means=[layer])
        return self._kept[("means", layer)]

    def class_sums(self, layer: str) -> np.ndarray:
        """Per class, the sum of ``layer``'s activations over its images: float64 (classes, *output shape)."""
        self.want(class_sums=[layer])
        return self._kept[("sums", layer)]

    def _read(self, item: tuple[str, str]) -> bool:
        """Take ``item`` from the run folder's cache if it is kept there (with the expected shape)."""
        if self.keep is None:
            return False
        what, layer = item
        found = cache.read_arrays(self.keep.path(what, layer), (what,))
        if found is None or found[what].shape != self._shape(item):
            return False
        self._kept[item] = found[what]
        return True

    def _shape(self, item: tuple[str, str]) -> tuple[int, ...]:
        what, layer = item
        n, k = len(self.labels), self.num_classes
        if what == "logits":
            return (n, list(self.shapes.values())[-1][0])
        if what == "means":
            return (n, self.shapes[layer][0])
        return (k, *self.shapes[layer])

    def _compute(self, items: list[tuple[str, str]]) -> dict[tuple[str, str], np.ndarray]:
        """The ``items`` from one forward pass over the images, a chunk at a time (in numpy where the numpy
        model serves, else in torch)."""
        new_means = [layer for what, layer in items if what == "means"]
        new_sums = [layer for what, layer in items if what == "sums"]
        new_logits = ("logits", "model") in items
        n = len(self.labels)
        means = {layer: np.empty((n, self.shapes[layer][0]), dtype=np.float32) for layer in new_means}
        sums = {layer: np.zeros((self.num_classes, *self.shapes[layer])) for layer in new_sums}
        parts = []
        for start, scores, maps, mean_parts in self._passes(new_sums, new_means, new_logits):
            if scores is not None:
                parts.append(scores)
            for layer, mean in means.items():
                mean[start:start + len(mean_parts[layer])] = mean_parts[layer]
            for layer, total in sums.items():
                _add_per_class(total, maps[layer], self.labels[start:start + len(maps[layer])])
        result: dict[tuple[str, str], np.ndarray] = {("means", k): v for k, v in means.items()}
        result.update({("sums", k): v for k, v in sums.items()})
        if new_logits:
            k = self._shape(("logits", "model"))[1]
            result[("logits", "model")] = np.concatenate(parts) if parts else np.zeros((0, k), np.float32)
        return result

    def _passes(self, maps: list[str], means: list[str], logits: bool) -> Iterator[
            tuple[int, np.ndarray | None, dict[str, np.ndarray], dict[str, np.ndarray]]]:
        """``(start, logits or None, {layer: activations}, {layer: per-map means})`` per chunk, as numpy arrays,
        for the layers in ``maps`` and ``means``: from the numpy model where it serves (whose logits and means
        are the same bits whatever else a pass gives), else from the torch model."""
        engine = self._numpy_model() if self._numpy_model is not None else None
        if engine is not None:
            for start, got in engine.chunked_outputs(self.x, maps, logits, self.numpy_prepare, self.chunk, means):
                yield start, got.logits, got.maps, got.means
            return
        from cnnlab.inspection.activations import chunked_outputs

        order = list(self.shapes)
        layers = sorted({*maps, *means}, key=order.index)
        for start, scores, outputs in chunked_outputs(self.model, self.x, layers, logits, prepare=self.prepare,
                                                      chunk=self.chunk):
            arrays = {layer: acts.numpy() for layer, acts in outputs.items()}
            yield (start, None if scores is None else scores.float().numpy(), arrays,
                   {layer: map_means_of(arrays[layer]) for layer in means})


def _add_per_class(total: np.ndarray, acts: np.ndarray, labels: np.ndarray) -> None:
    """Add each image's activations ``acts`` (N, ...) into its class's row of ``total`` (classes, ...), in
    float64."""
    for k in np.unique(labels):
        total[k] += acts[labels == k].sum(axis=0, dtype=np.float64)
