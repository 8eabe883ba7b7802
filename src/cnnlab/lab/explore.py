"""The lab's torch work: predictions with every map, Grad-CAM, test images, mistakes, one map's story.

Runs on the worker thread only (``cnnlab.lab.worker``). Loaded runs are cached and reloaded when their weights
change (a run still training gets new weights after every epoch). Maps travel as one byte per value: each map
is scaled from its own minimum (0) to its maximum (255), and the minimum and maximum go along, so the page can
draw it and still say what the values were.
"""

from __future__ import annotations

import base64
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnnlab import store
from cnnlab.errors import CnnlabError
from cnnlab.inspection import activations as act
from cnnlab.inspection import evaluation as ev
from cnnlab.inspection import filters as flt
from cnnlab.inspection.images import ImageSets
from cnnlab.inspection.patterns import fit_centroids
from cnnlab.inspection.saliency import saliency
from cnnlab.lab.runs import NotFound, RunChanging
from cnnlab.run import Run, load

SIZE = 28
MAX_MISTAKES = 200
TOP_IMAGES = 9
CACHED_RUNS = 3  # loaded runs kept in memory (a run with its test set and map means is a few tens of MB)


class BadInput(CnnlabError):
    """A request whose content is wrong (shape, range, type); the message says what would be right."""


class LoadedRun:
    """A run in memory with what the lab computed for it (its test set's predictions and map means)."""

    def __init__(self, run: Run, stamp: tuple):
        self.run, self.stamp = run, stamp
        self.layers = act.map_layers(run.model)
        self._sets: ImageSets | None = None
        self._evaluation: ev.Evaluation | None = None
        self._means: dict[str, np.ndarray] = {}

    def sets(self) -> ImageSets:
        """The run's raw test and training images (loaded on first use)."""
        if self._sets is None:
            self._sets = ImageSets(self.run.config)
        return self._sets

    def evaluation(self) -> ev.Evaluation:
        """Predictions on the whole test set (computed on first use)."""
        if self._evaluation is None:
            sets = self.sets()
            self._evaluation = ev.evaluate(self.run.model, self.run.prepare(sets.images("test")),
                                           sets.labels("test"))
        return self._evaluation

    def map_means(self, layer: str) -> np.ndarray:
        """Each test image's mean activation of every map of ``layer``, (N, maps)."""
        if layer not in self._means:
            self._means[layer] = act.map_means(self.run.model, self.sets().images("test"), layer,
                                               prepare=self.run.prepare)
        return self._means[layer]


class Explorer:
    """Loads runs on demand and keeps the last few, each reloaded when its weights file changes."""

    def __init__(self, cached: int = CACHED_RUNS, device: Any = "auto"):
        self.cached, self.device = cached, device
        self.runs: OrderedDict[Path, LoadedRun] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, folder: Path) -> LoadedRun:
        """The loaded run of ``folder`` (a run folder already resolved under the root)."""
        stamp = _stamp(folder)
        with self.lock:
            loaded = self.runs.get(folder)
            if loaded is None or loaded.stamp != stamp:
                loaded = LoadedRun(_load(folder, self.device), stamp)
                self.runs[folder] = loaded
            self.runs.move_to_end(folder)
            while len(self.runs) > self.cached:
                self.runs.popitem(last=False)
            return loaded


def _check_list(value: Any, rule: str, items: str) -> None:
    if not isinstance(value, list) or len(value) != SIZE:
        got = f"{len(value)} {items}" if isinstance(value, list) else type(value).__name__
        raise BadInput(f"{rule}; got {got}")


def check_pixels(value: Any) -> np.ndarray:
    """Return ``value`` (28 lists of 28 integers 0..255) as uint8 (28, 28), or raise ``BadInput`` saying why."""
    _check_list(value, f"pixels must be a list of {SIZE} rows of {SIZE} integers 0..255", "rows")
    for r, row in enumerate(value):
        _check_list(row, f"pixels row {r} must hold {SIZE} integers 0..255", "values")
        for c, v in enumerate(row):
            if type(v) is not int or not 0 <= v <= 255:
                raise BadInput(f"pixels[{r}][{c}] = {v!r}: each pixel must be an integer 0..255 "
                               "(white digit on black, as MNIST)")
    return np.asarray(value, dtype=np.uint8)


def encode_maps(maps: np.ndarray) -> dict[str, Any]:
    """Encode (C, H, W) floats: each map scaled to bytes 0..255 between its own min and max, base64."""
    flat = maps.reshape(len(maps), -1).astype(np.float32)
    lo, hi = flat.min(axis=1), flat.max(axis=1)
    span = np.where(hi > lo, hi - lo, 1.0)
    scaled = np.rint((flat - lo[:, None]) / span[:, None] * 255).astype(np.uint8)
    return {"shape": list(maps.shape), "min": lo.tolist(), "max": hi.tolist(),
            "data": base64.b64encode(scaled.tobytes()).decode("ascii")}


def predict(loaded: LoadedRun, pixels: np.ndarray) -> dict[str, Any]:
    """Class probabilities and the maps of every conv and pooling layer for one image, in one forward pass."""
    model = loaded.run.model
    maps: dict[str, Any] = {}
    names = model.layer_names
    with act.eval_mode(model), torch.inference_mode():
        x = loaded.run.prepare(pixels[None])
        for name in names:
            layer = model.layers[name]
            x = layer.op(x) if name == names[-1] else layer(x)  # the last activation is the softmax below
            if name in loaded.layers:
                maps[name] = encode_maps(x[0].cpu().numpy())
        probabilities = torch.softmax(x.float(), dim=1)[0].cpu().numpy()
    return {"probabilities": probabilities.tolist(), "predicted": int(probabilities.argmax()), "layers": maps}


def grad_cam(loaded: LoadedRun, pixels: np.ndarray, target: int | None, layer: str | None) -> dict[str, Any]:
    """Grad-CAM (and the gradient saliency) of one image for class ``target`` (default: the predicted one)."""
    model = loaded.run.model
    if target is not None and not 0 <= target < model.num_classes:
        raise BadInput(f"class {target} is out of range: this model has classes 0..{model.num_classes - 1}")
    if layer is not None:
        check_map_layer(loaded, layer)
        if model.layers[layer].kind != "conv":
            convs = [n for n in loaded.layers if model.layers[n].kind == "conv"]
            raise BadInput(f"Grad-CAM needs a conv layer; {layer} is a {model.layers[layer].kind} layer "
                           f"(conv layers: {', '.join(convs)})")
    result = saliency(model, loaded.run.prepare(pixels[None]), None if target is None else [target], layer)
    return {"layer": result.layer, "target": int(result.targets[0]),
            "probability": float(result.probabilities[0, result.targets[0]]),
            "grad_cam": encode_maps(result.grad_cam), "gradient": encode_maps(result.gradient)}


def check_map_layer(loaded: LoadedRun, layer: str) -> str:
    """Return ``layer`` if it is one of the run's conv or pooling layers, else raise ``NotFound``."""
    if layer not in loaded.layers:
        raise NotFound(f"no conv or pooling layer named {layer!r} in this run; its layers with maps: "
                       f"{', '.join(loaded.layers)}")
    return layer


def test_image(loaded: LoadedRun, index: int | None, label: int | None, nth: int) -> dict[str, Any]:
    """A test image by index, or the ``nth`` test image of class ``label``; with the model's prediction."""
    sets = loaded.sets()
    labels = sets.labels("test")
    if index is None:
        if label is None:
            raise BadInput("give index=N, or label=C (with nth=K for the K-th image of that class)")
        of_class = np.flatnonzero(labels == label)
        if not len(of_class):
            raise BadInput(f"label {label}: the test set has no image of that class "
                           f"(classes: {', '.join(map(str, np.unique(labels)))})")
        index = int(of_class[nth % len(of_class)])
    try:
        picked = sets.pick("test", [index], option="index")
    except CnnlabError as exc:
        raise BadInput(str(exc)) from None
    probabilities = loaded.run.predict(picked.images)[0]
    return {"index": index, "label": int(picked.labels[0]), "pixels": picked.images[0].tolist(),
            "predicted": int(probabilities.argmax()), "probability": float(probabilities.max())}


def mistakes(loaded: LoadedRun, count: int) -> dict[str, Any]:
    """The test images the model gets wrong most confidently, with their labels and predictions."""
    if not 1 <= count <= MAX_MISTAKES:
        raise BadInput(f"count {count}: give 1..{MAX_MISTAKES}")
    evaluation = loaded.evaluation()
    rows = [{"index": int(i), "label": int(evaluation.labels[i]), "predicted": int(evaluation.predictions[i]),
             "probability": float(evaluation.probabilities[i, evaluation.predictions[i]])}
            for i in ev.confident_mistakes(evaluation, count)]
    return {"accuracy": evaluation.accuracy, "wrong": int((evaluation.predictions != evaluation.labels).sum()),
            "images": int(len(evaluation.labels)), "mistakes": rows}


def map_story(loaded: LoadedRun, layer: str, index: int) -> dict[str, Any]:
    """One map: its gradient-ascent pattern (cached in the run folder), its top test images, its class means."""
    check_map_layer(loaded, layer)
    count = loaded.run.model.output_shapes[layer][0]
    if not 0 <= index < count:
        raise NotFound(f"map {index} is out of range: layer {layer} has {count} maps, so use 0..{count - 1}")
    pattern = filter_pattern(loaded, layer, index)
    means = loaded.map_means(layer)[:, index]  # (N,)
    sets = loaded.sets()
    labels = sets.labels("test")
    top = np.argsort(-means, kind="stable")[:TOP_IMAGES]
    images = sets.images("test")
    classes = fit_centroids(means[:, None], labels, loaded.run.model.num_classes)[:, 0]
    return {"layer": layer, "map": index, "pattern": pattern,
            "top": [{"index": int(i), "label": int(labels[i]), "activation": float(means[i]),
                     "pixels": base64.b64encode(images[i].tobytes()).decode("ascii")} for i in top],
            "class_means": classes.tolist(), "test_mean": float(means.mean()) if len(means) else None}


def filter_pattern(loaded: LoadedRun, layer: str, index: int) -> dict[str, Any]:
    """The map's pattern from ``RUN/inspect/filters_LAYER.npz``; computed for the whole layer when missing or older
    than the weights (as ``cnnlab filters RUN --layer LAYER`` does, which writes the same files)."""
    from cnnlab.report import filter_pictures

    cache = loaded.run.path / "inspect" / f"filters_{layer}.npz"
    if not _fresh(cache, loaded.run.path):
        filter_pictures(loaded.run, layer)
    with np.load(cache, allow_pickle=False) as saved:
        position = int(np.flatnonzero(saved["maps"] == index)[0])
        pixels = np.clip(np.rint(saved["pixels"][position]), 0, 255).astype(np.uint8)
        return {"pixels": base64.b64encode(pixels.tobytes()).decode("ascii"),
                "activation": float(saved["activation"][position]), "ratio": float(saved["ratio"][position]),
                "steps": int(saved["steps"])}


def _fresh(cache: Path, folder: Path) -> bool:
    try:
        return cache.stat().st_mtime_ns >= store.commit_marker(folder).stat().st_mtime_ns
    except OSError:
        return False


def _stamp(folder: Path) -> tuple:
    try:
        marker = store.commit_marker(folder).stat()  # a new checkpoint (best weights included) changes it
    except FileNotFoundError:
        raise RunChanging(f"{folder.name} has no weights yet (its first checkpoint is being written); "
                          "try again in a moment") from None
    return marker.st_mtime_ns, marker.st_size


def _load(folder: Path, device: Any) -> Run:
    try:
        return load(folder, device)
    except CnnlabError as exc:
        raise RunChanging(f"the run could not be loaded ({exc})") from None
    except OSError as exc:
        raise RunChanging(f"the run could not be loaded ({exc.__class__.__name__}: {exc}); try again") from None
