"""Pictures and the report: inspection arrays become PNG files (each with its ``.npz``) and one HTML page.

Every ``*_pictures`` function takes a loaded run (or its folder), computes with ``cnnlab.inspection``, draws
with ``cnnlab.plots`` and writes atomically. By default files go to ``<run>/inspect/``; ``out`` names a file
(``x.png``: several outputs become ``x_<default name>``) or a folder. ``write_report`` calls them all and
embeds the pictures in ``<run>/report.html``.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import importlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from cnnlab import __version__, child_process
from cnnlab import layers as kinds
from cnnlab.errors import CnnlabError
from cnnlab.files import write_bytes, write_json, write_text
from cnnlab.inspection import cache
from cnnlab.inspection import evaluation as ev
from cnnlab.inspection import patterns as pat
from cnnlab.inspection.images import ImageSets
from cnnlab.inspection.shared import SharedPass, test_keep
from cnnlab.lazy import lazy_module
from cnnlab.runfolder import RunFolder, open_folder

if TYPE_CHECKING:
    import torch

    from cnnlab.run import Run

# The views that need the model import torch on first use: evaluate and patterns draw from kept results without it.
# matplotlib too is imported when the first picture is drawn: the report's passes run in a child process that
# draws nothing (0.3 s of its start).
plots = lazy_module("cnnlab.plots")
act = lazy_module("cnnlab.inspection.activations")
flt = lazy_module("cnnlab.inspection.filters")
sal = lazy_module("cnnlab.inspection.saliency")

INSPECT_DIR = "inspect"
REPORT = "report.html"
REPORT_IMAGE = 19  # the articles' test image

Echo = Callable[[str], None]


@dataclass
class Written:
    """What a pictures function wrote, and the figures worth printing.

    Attributes:
        paths: the files written (PNG, NPZ, JSON), in order.
        summary: key figures (accuracies, ratios) by name.
    """

    paths: list[Path] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)

    def pngs(self) -> list[Path]:
        """The PNG files among ``paths``."""
        return [p for p in self.paths if p.suffix == ".png"]


def as_run(run: Run | RunFolder | str | Path) -> Run:
    """Return ``run`` if it is loaded, else load the run folder."""
    if isinstance(run, RunFolder):
        return run.run()
    if isinstance(run, (str, Path)):
        from cnnlab.run import load

        return load(run)
    return run


def as_folder(run: Run | RunFolder | str | Path, device: Any = "auto") -> RunFolder:
    """The run folder as the pictures that can draw from kept results see it: read without the model (which is
    loaded onto ``device`` when first needed), or the folder of a loaded run (the one it was loaded from, else
    one per run), so that all pictures of a run share one test pass."""
    if isinstance(run, RunFolder):
        return run
    if isinstance(run, (str, Path)):
        return open_folder(run, device, load=_load_folder)
    loaded_from = _PER_RUN.get(run, {}).get("loaded from")
    folder = loaded_from() if loaded_from is not None else None
    return folder or _per_run(run, "folder", lambda: RunFolder.of_run(run))


def _load_folder(folder: RunFolder) -> Run:
    from cnnlab.run import load_folder

    run = load_folder(folder)
    # weak: the folder keeps its run, and a run's entry must not keep the run alive through its folder
    _PER_RUN.setdefault(run, {})["loaded from"] = weakref.ref(folder)
    return run


def check_writable(folder: Path, option: str) -> None:
    """Refuse, in one line, a default output folder this process may not write, naming one it may."""
    existing = folder if folder.exists() else folder.parent
    if os.access(existing, os.W_OK | os.X_OK):
        return
    instead = Path.cwd() / f"{folder.parent.name}-{folder.name}"
    if not os.access(Path.cwd(), os.W_OK):
        instead = Path(tempfile.gettempdir()) / f"{folder.parent.name}-{folder.name}"
    raise CnnlabError(f"cannot write into {folder}: no permission; write elsewhere with {option}, "
                      f"for example {option.split()[0]} {instead}")


_PER_RUN: "weakref.WeakKeyDictionary[Run, dict[Any, Any]]" = weakref.WeakKeyDictionary()


def _per_run(run: Run, key: Any, make: Callable[[], Any]) -> Any:
    """``make()`` once per run and key, kept as long as the run is."""
    kept = _PER_RUN.setdefault(run, {})
    if key not in kept:
        kept[key] = make()
    return kept[key]


def _per_folder(folder: RunFolder, key: Any, make: Callable[[], Any]) -> Any:
    """``make()`` once per folder and key, kept with the folder (what is kept may refer to the folder)."""
    if key not in folder.memo:
        folder.memo[key] = make()
    return folder.memo[key]


def test_pass(run: Run | RunFolder) -> SharedPass:
    """The run's test images as its model sees them, shared by every picture of that run (one forward pass),
    and kept in ``RUN/cache/testpass/`` (keyed by the weights, the test images and the normalization)."""
    folder = as_folder(run)

    def make() -> SharedPass:  # raw test images, normalized a chunk at a time as Run.prepare does
        sets = image_sets(folder)
        raw, labels = sets.images("test"), sets.labels("test")
        keep = test_keep(folder.path, folder.weights, cache.arrays_hash(raw, labels), folder.normalizer.to_dict())
        return SharedPass(lambda: folder.run().model, raw, labels, num_classes=folder.num_classes,
                          shapes=folder.shapes, prepare=lambda images: folder.run().prepare(images), keep=keep,
                          numpy_model=folder.numpy_model, numpy_prepare=folder.normalizer.apply_numpy)

    return _per_folder(folder, "test pass", make)


def image_sets(run: Run | RunFolder) -> ImageSets:
    """The run's raw test and training images in its order, shared by every picture of that run (the report
    loaded the data set five times)."""
    folder = as_folder(run)
    return _per_folder(folder, "image sets", lambda: ImageSets(folder.config))


def output_paths(run: Run | RunFolder, names: list[str], out: str | Path | None) -> list[Path]:
    """Where the files ``names`` go: ``<run>/inspect/``, or as ``out`` says (a ``.png`` file or a folder)."""
    if out is None:
        folder = run.path / INSPECT_DIR
        check_writable(folder, "--out DIR")
        return [folder / name for name in names]
    out = Path(out)
    if out.suffix.lower() != ".png":
        return [out / name for name in names]
    if len(names) == 1:
        return [out.with_suffix(Path(names[0]).suffix)]
    return [out.with_name(f"{out.stem}_{name}") for name in names]


def write_npz(path: str | Path, **arrays: Any) -> Path:
    """Write arrays as an ``.npz`` file atomically."""
    buf = io.BytesIO()
    np.savez_compressed(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    return write_bytes(path, buf.getvalue(), durable=False)  # made again by running the command again


def _save(fig: Any, png: Path, arrays: dict[str, Any], written: Written) -> None:
    _keep(plots.png_bytes(fig), png, arrays, written)


def _keep(png_bytes: bytes, png: Path, arrays: dict[str, Any], written: Written) -> None:
    """Write a picture and, beside it, the arrays it shows (``.npz``)."""
    written.paths.append(write_bytes(png, png_bytes, durable=False))
    written.paths.append(write_npz(png.with_suffix(".npz"), **arrays))


# ---------------------------------------------------------------------------------------------------------
# Activations


def activation_pictures(run: Run | RunFolder | str | Path, layer: str, images: list[int], image_set: str = "test",
                        cols: int = 8, cmap: str = "viridis", scale: bool = False,
                        out: str | Path | None = None) -> Written:
    """Write, per image and layer, the grid of every map's activation beside the input image.

    Args:
        run: a run or its folder.
        layer: a layer name, or ``"all"`` for every conv and pooling layer.
        images: indices into the run's ``image_set``.
        image_set: ``"test"`` or ``"train"``.
        cols: maps per row.
        cmap: matplotlib colour map.
        scale: standardize and clip each map as the articles' option (default: raw values, one colour scale).
        out: a ``.png`` file or a folder (default ``<run>/inspect/``).

    Returns:
        The PNG and NPZ paths (``activations_<layer>_<set><index>[_scaled].png``).
    """
    run = as_run(run)
    layers = _layers(run, layer)
    plots.check_cmap(cmap)
    if cols < 1:
        raise CnnlabError(f"--cols {cols}: give at least 1 column")
    picked = image_sets(run).pick(image_set, images)
    x = run.prepare(picked.images)
    jobs = [(name, i) for name in layers for i in range(len(picked.indices))]
    tag = "_scaled" if scale else ""
    names = [f"activations_{name}_{image_set}{picked.indices[i]}{tag}.png" for name, i in jobs]
    written = Written()
    by_layer = {name: act.layer_activations(run.model, x, name) for name in layers}
    for (name, i), png in zip(jobs, output_paths(run, names, out)):
        fig, arrays = _activation_figure(run, name, by_layer[name][i], picked, i, cols, cmap, scale)
        _save(fig, png, arrays, written)
    return written


def _layers(run: Run, layer: str) -> list[str]:
    if layer == "all":
        names = act.map_layers(run.model)
        if not names:
            raise CnnlabError("--layer all: the model has no conv or pooling layer; give a layer name: "
                              + ", ".join(run.model.layer_names))
        return names
    return [act.check_layer(run.model, layer)]


def _activation_figure(run: Run, layer: str, values: np.ndarray, picked: Any, i: int, cols: int, cmap: str,
                       scale: bool) -> tuple[Any, dict[str, Any]]:
    index, label, image = picked.indices[i], int(picked.labels[i]), picked.images[i]
    kind = kinds.get(run.model.layers[layer].kind).label
    shape = tuple(values.shape)
    title = f"{layer} ({kind}) output {shape}  |  {picked.image_set} image {index}, label {_name(run, label)}"
    arrays = {"activations": values, "image": image, "label": label, "index": index, "set": picked.image_set,
              "layer": layer}
    if values.ndim == 1:
        return plots.activation_bars_figure(values, image, title), arrays
    shown = act.scale_maps(values) if scale else values
    if scale:
        arrays["scaled"] = shown
        fig = plots.activation_grid_figure(shown, image, title + "  |  scaled", cols, cmap, 0.0, 255.0,
                                           "standardized per map: 128 + 64 z, clipped to 0..255")
    else:
        fig = plots.activation_grid_figure(shown, image, title, cols, cmap)
    return fig, arrays


# ---------------------------------------------------------------------------------------------------------
# Filter patterns


def filter_pictures(run: Run | RunFolder | str | Path, layer: str, maps: list[int] | None = None,
                    steps: int | None = None, seed: int = 0, cols: int = 8,
                    out: str | Path | None = None) -> Written:
    """Write the gradient-ascent pattern of each map of ``layer`` and how strongly it drives its map.

    Returns:
        The paths; ``summary`` has per map ``maps``, ``activation``, ``test_mean``, ``test_max``,
        ``ratio`` (pattern / average test image) and ``ratio_max`` (pattern / strongest test image), plus
        ``seconds`` of the optimization.
    """
    folder = as_folder(run)
    run = folder.run()
    steps = flt.STEPS if steps is None else steps
    act.check_layer(run.model, layer)
    chosen = flt.check_maps(run.model, layer, maps)
    every = len(chosen) == run.model.output_shapes[layer][0]
    if every:
        result = every_map_patterns(run, [layer], steps, seed)[layer]
    else:
        started = time.perf_counter()
        result = flt.cached_filter_patterns(run.path, run.model, layer, _pixel_bounds(run), maps=chosen.tolist(),
                                            steps=steps, seed=seed, pixel_scale=_pixel_scale(run))
        result.seconds = time.perf_counter() - started
    ratios = flt.pattern_ratios(result.activation, result.maps, test_pass(folder).means(layer))
    name = f"filters_{layer}.png" if every else f"filters_{layer}_maps{_span(chosen)}.png"
    (png,) = output_paths(run, [name], out)
    title = (f"{layer}: inputs that maximize each map's mean activation ({steps} steps, seed {seed}); "
             f"label: map, x pattern / average test image")
    written = Written(summary={"layer": layer, "maps": result.maps, "activation": result.activation,
                               "test_mean": ratios["data_mean"], "test_max": ratios["data_max"],
                               "ratio": ratios["ratio_mean"], "ratio_max": ratios["ratio_max"],
                               "seconds": result.seconds, "steps": steps})
    fig = plots.filter_grid_figure(result.pixels, result.maps, ratios["ratio_mean"], title, cols)
    _save(fig, png, {"pixels": result.pixels, "inputs": result.inputs, "maps": result.maps,
                     "activation": result.activation, "test_mean": ratios["data_mean"],
                     "test_max": ratios["data_max"], "ratio": ratios["ratio_mean"],
                     "ratio_max": ratios["ratio_max"], "steps": steps, "seed": seed, "layer": layer}, written)
    return written


def every_map_patterns(run: Run, layers: list[str], steps: int | None = None,
                       seed: int = 0) -> dict[str, flt.FilterPatterns]:
    """The filter patterns of every map of each of ``layers``, kept for the run: those not in the run folder's
    cache are computed side by side (``cached_filter_patterns_of_layers``); ``steps`` defaults to ``flt.STEPS``."""
    steps = flt.STEPS if steps is None else steps
    kept = _PER_RUN.setdefault(run, {})
    missing = [layer for layer in layers if ("filters", layer, steps, seed) not in kept]
    if missing:
        got = flt.cached_filter_patterns_of_layers(run.path, run.model, missing, _pixel_bounds(run), steps=steps,
                                                   seed=seed, pixel_scale=_pixel_scale(run))
        kept.update({("filters", layer, steps, seed): result for layer, result in got.items()})
    return {layer: kept[("filters", layer, steps, seed)] for layer in layers}


def _pixel_bounds(run: Run) -> tuple[torch.Tensor, torch.Tensor]:
    return _per_run(run, "pixel bounds", lambda: flt.pixel_bounds_raw(image_sets(run).images("train"), run.prepare))


def _pixel_scale(run: Run) -> tuple[np.ndarray, np.ndarray]:
    return run.normalizer.mean, run.normalizer.std


def _span(maps: np.ndarray) -> str:
    contiguous = len(maps) == maps[-1] - maps[0] + 1 and np.all(np.diff(maps) == 1)
    return f"{maps[0]}-{maps[-1]}" if contiguous else "_".join(str(m) for m in maps[:8])


# ---------------------------------------------------------------------------------------------------------
# Class patterns


def pattern_pictures(run: Run | RunFolder | str | Path, layer: str, cols: int = 8, cmap: str = "viridis",
                     out: str | Path | None = None) -> Written:
    """Write the classes x maps heat map of mean activations (test set), per class the average map images,
    and the nearest-class-pattern classifier's accuracy next to the network's.

    What the forward passes give (the test pass, the training images' centroids) is kept in the run's cache:
    a later call for the same weights loads neither the model nor torch.

    Returns:
        The paths; ``summary`` has ``nearest_accuracy``, ``network_accuracy`` and ``layer``.
    """
    folder = as_folder(run)
    shared = test_pass(folder)
    shared.check(layer)
    # The pass over the training images (kept after the first time) runs in a child process from here on,
    # beside the test pass and the drawing of the class maps (see _start_child)
    kept = ("centroids", layer) in folder.memo or cache.read_arrays(_centroids_path(folder, layer), ()) is not None
    child = _start_child(folder, "keep_centroids", layer, wanted=not kept)
    with child_process.beside(child):
        plots.check_cmap(cmap)
        shared.want(means=[layer], class_sums=[layer], logits=True)
        classes = pat.patterns_from_sums(layer, shared.class_sums(layer), shared.labels, shared.means(layer))
        has_maps = classes.map_images.ndim == 4
        names = [f"patterns_{layer}.png"] + ([f"patterns_{layer}_class{k}.png" for k in range(len(classes.counts))]
                                             if has_maps else [])
        paths = output_paths(folder, names, out)
        class_pictures = _class_map_pictures(folder, classes, shared.labels, len(paths) - 1, cols, cmap)
        network = ev.from_logits(shared.logits(), shared.labels, folder.num_classes).accuracy

        def title(nearest: float) -> str:
            return (f"{layer}: mean activation of each map per class ({len(shared.labels)} test images); "
                    f"nearest class pattern {nearest:.4f} vs network {network:.4f}")

        # the heat map is drawn while the child may still run; only its title waits for the centroids
        heatmap = plots.class_heatmap_figure(classes.means, title(0.0), cmap, folder.classes)
        heatmap_png = plots.png_with_title_later(heatmap, heatmap.axes[0].title)
    centroids = class_centroids(folder, layer)
    nearest = pat.score_nearest(layer, centroids, classes.features, shared.labels)
    summary = {"layer": layer, "nearest_accuracy": nearest.accuracy, "network_accuracy": network,
               "test_images": int(len(shared.labels)), "train_images": image_sets(folder).size("train")}
    written = Written(summary=summary)
    _keep(heatmap_png(title(nearest.accuracy)), paths[0],
          {"means": classes.means, "counts": classes.counts, "map_images": classes.map_images,
           "centroids": nearest.centroids, "nearest_predictions": nearest.predictions,
           "nearest_accuracy": nearest.accuracy, "network_accuracy": network, "layer": layer}, written)
    for png, (picture, arrays) in zip(paths[1:], class_pictures):
        _keep(picture, png, arrays, written)
    return written


def class_centroids(folder: RunFolder, layer: str) -> np.ndarray:
    """The class means (classes, maps) of ``layer``'s map means over the run's training images: computed once
    per folder, kept in the run's cache (as ``patterns.cached_centroids``); in numpy where it serves, as the test
    pass (see ``SharedPass``)."""
    sets = image_sets(folder)

    def fit() -> dict[str, np.ndarray]:
        engine = folder.numpy_model()
        if engine is not None:  # each chunk gathered where it is normalized: no 47 MB copy of a reshuffled set
            positions = np.arange(sets.size("train"))
            means = engine.map_means(positions, layer,
                                     lambda rows: folder.normalizer.apply_numpy(sets.gather("train", rows)))
        else:
            loaded = folder.run()
            means = act.map_means(loaded.model, sets.images("train"), layer, loaded.prepare)
        return {"centroids": pat.fit_centroids(means, sets.labels("train"), folder.num_classes)}

    return _per_folder(folder, ("centroids", layer),
                       lambda: cache.cached_arrays(_centroids_path(folder, layer), ("centroids",), fit)["centroids"])


def _centroids_path(folder: RunFolder, layer: str) -> Path:
    sets = image_sets(folder)
    return _per_folder(folder, ("centroids path", layer), lambda: pat.centroids_path(
        folder.path, folder.weights, layer, sets.set_hash("train"), json.dumps(folder.normalizer.to_dict()),
        folder.num_classes))


def keep_centroids(run_dir: str, layer: str) -> None:
    """In a child process of ``pattern_pictures``: ``class_centroids`` of the run, kept in its cache (nothing
    where the numpy model does not serve: this process would import torch for what the command computes itself)."""
    folder = as_folder(run_dir, "cpu")
    if folder.numpy_model() is not None:
        class_centroids(folder, layer)


def keep_test_logits(run_dir: str) -> None:
    """In a child process of ``evaluation_pictures``: the test pass's logits, kept in the run's cache (nothing
    where the numpy model does not serve, as ``keep_centroids``)."""
    folder = as_folder(run_dir, "cpu")
    if folder.numpy_model() is not None:
        test_pass(folder).want(logits=True)


def _class_map_pictures(folder: RunFolder, classes: pat.ClassPatterns, labels: np.ndarray, count: int, cols: int,
                        cmap: str) -> list[tuple[bytes, dict[str, Any]]]:
    """Per class (``count`` of them, 0 for a flat layer), the PNG of its average maps and its arrays."""
    if count == 0:
        return []
    raw = image_sets(folder).images("test")
    means = [raw[labels == k].mean(axis=0) if classes.counts[k] else np.zeros((28, 28)) for k in range(count)]
    titles = [f"{classes.layer}: average maps of class {_name(folder, k)} ({classes.counts[k]} test images), "
              f"shape {tuple(classes.map_images.shape[1:])}" for k in range(count)]
    pictures = plots.activation_grid_pngs(zip(classes.map_images, means, titles), 0.0,
                                          float(classes.map_images.max()), cols, cmap,
                                          "mean activation (scale shared by all classes)", "average input")
    return [(picture, {"map_images": classes.map_images[k], "mean_image": means[k], "class": k,
                       "count": classes.counts[k], "layer": classes.layer}) for k, picture in enumerate(pictures)]


# ---------------------------------------------------------------------------------------------------------
# Evaluation


def evaluation_pictures(run: Run | RunFolder | str | Path, mistakes: int = 24,
                        out: str | Path | None = None) -> Written:
    """Write test accuracy, loss, per-class accuracy and the confusion matrix (JSON and PNG), and a gallery of
    the most confidently misclassified test images.

    The test pass's logits are kept in the run's cache: a later call for the same weights loads neither the
    model nor torch.

    Returns:
        The paths; ``summary`` is the JSON record (``accuracy``, ``loss``, ``per_class_accuracy``, ...).
    """
    if mistakes < 1:
        raise CnnlabError(f"--mistakes {mistakes}: give at least 1 image for the gallery of mistakes")
    folder = as_folder(run)
    shared = test_pass(folder)
    # Where the logits are not kept, the test pass runs in the child process the command line started before
    # its imports (see _start_child) while matplotlib is imported here (1.43 -> 1.32 s with nothing kept, medians
    # of 10 pairs, AMD EPYC Zen 4, 2 cores); called from Python, this process makes it
    child = _start_child(folder, "keep_test_logits", wanted=not shared.has("logits"), only_early=True)
    with child_process.beside(child):
        importlib.import_module("cnnlab.plots")  # now, not when the lazy ``plots`` is first used
    result = ev.from_logits(shared.logits(), shared.labels, folder.num_classes)
    json_path, confusion_png, gallery_png = output_paths(
        folder, ["evaluation.json", "evaluation_confusion.png", "evaluation_mistakes.png"], out)
    record = result.to_dict(folder.classes)
    written = Written(paths=[write_json(json_path, record, durable=False)], summary=record)
    title = f"test set: {record['correct']} of {record['images']} correct ({result.accuracy:.4f})"
    _save(plots.confusion_figure(result.confusion, title, folder.classes), confusion_png,
          {"confusion": result.confusion, "labels": result.labels, "predictions": result.predictions,
           "probabilities": result.probabilities}, written)
    worst = ev.confident_mistakes(result, mistakes)
    raw = image_sets(folder).images("test")[worst]
    confidence = result.probabilities[worst, result.predictions[worst]]
    captions = [f"#{i} {_name(folder, result.labels[i])}->{_name(folder, result.predictions[i])} ({c:.2f})"
                for i, c in zip(worst, confidence)]
    fig = plots.gallery_figure(raw, captions, f"the {len(worst)} most confident mistakes: "
                                              "#test index true->predicted (probability)")
    _save(fig, gallery_png, {"images": raw, "indices": worst, "labels": result.labels[worst],
                             "predictions": result.predictions[worst], "confidence": confidence}, written)
    return written


def _name(run: Run | RunFolder, label: int) -> str:
    """The class name of a label (its number where the run names fewer classes than its model has outputs)."""
    label = int(label)
    return run.classes[label] if label < len(run.classes) else str(label)


# ---------------------------------------------------------------------------------------------------------
# Saliency


def saliency_pictures(run: Run | RunFolder | str | Path, images: list[int], image_set: str = "test",
                      layer: str | None = None, out: str | Path | None = None) -> Written:
    """Write, per image, the input with gradient saliency and Grad-CAM (last conv layer unless ``layer``).

    Returns:
        The paths; ``summary`` has per image ``predicted`` and ``probability``.
    """
    run = as_run(run)
    picked = image_sets(run).pick(image_set, images)
    result = sal.saliency(run.model, run.prepare(picked.images), layer=layer)
    names = [f"saliency_{image_set}{i}.png" for i in picked.indices]
    written = Written(summary={"layer": result.layer, "predicted": result.targets.tolist(),
                               "probability": result.probabilities.max(axis=1).tolist(),
                               "labels": picked.labels.tolist(), "indices": picked.indices,
                               "label_names": [_name(run, c) for c in picked.labels],
                               "predicted_names": [_name(run, c) for c in result.targets]})
    for j, png in enumerate(output_paths(run, names, out)):
        target = int(result.targets[j])
        title = (f"{image_set} image {picked.indices[j]}, label {_name(run, picked.labels[j])}: predicted "
                 f"{_name(run, target)} "
                 f"(p = {result.probabilities[j, target]:.3f})")
        fig = plots.saliency_figure(picked.images[j], result.gradient[j], result.grad_cam[j], title, result.layer)
        _save(fig, png, {"image": picked.images[j], "gradient": result.gradient[j], "grad_cam": result.grad_cam[j],
                         "grad_cam_maps": result.grad_cam_maps[j], "target": target,
                         "probabilities": result.probabilities[j], "layer": result.layer}, written)
    return written


# ---------------------------------------------------------------------------------------------------------
# The HTML report


def write_report(run_dir: str | Path | Run | RunFolder, echo: Echo | None = print) -> Path:
    """Write ``<run>/report.html``: one self-contained page with every picture embedded.

    It holds the config, the layer table, the curves, the evaluation, the activation grids of one test image
    across all conv and pooling layers with its saliency, the filter patterns of every conv layer and the
    class patterns of the last conv layer. The pictures also stay in ``<run>/inspect/``.

    Args:
        run_dir: the run folder (its path, or as ``as_folder`` reads it), or a loaded ``Run`` (on the device
            it was loaded to).
        echo: receives one progress line per section (None = silent).

    Returns:
        The path of the page.
    """
    say = echo or (lambda _line: None)
    folder = as_folder(run_dir)
    convs = _conv_names(folder)
    # The child's work fills what this process leaves of the cores beside this process's own sections (torch's
    # import, one image's activations and saliency, the ascent, the filter pictures); on 2 cores both are busy
    # throughout, and either side may end last
    child = _start_child(folder, "write_child_sections", lines=True, nice=child_process.NICE)
    done: dict[str, tuple[str, float]] = {}
    beside: dict[str, tuple[str, float]] = {}  # the sections the child made
    try:
        run = folder.run()
        image = REPORT_IMAGE if image_sets(folder).size("test") > REPORT_IMAGE else 0
        activations = f"activations of test image {image}"
        done[activations] = _timed(lambda: _section_activations(folder, image))
        if child is not None:
            child_process.line(child)  # its test pass is kept: the filter pictures find their test means there
        done["filter patterns"] = _timed(lambda: _section_filters(folder, convs))
        if child is not None:
            beside = _child_sections(child_process.line(child))
            done.update(beside)
        for what, make in _torch_free_sections(folder, convs):
            if what not in done:  # no child, or it failed: made here (an error is then met here, in one line)
                done[what] = _timed(make)
    finally:
        child_process.end(child, wait=False)  # done by now, unless this process failed
    sections = [_section_run(run)]
    for what in ("evaluation", activations, "filter patterns", "class patterns"):
        section, seconds = done[what]
        sections.append(section)
        say(f"  report: {what} ({seconds:.1f} s{', in a process beside the rest' if what in beside else ''})")
    path = write_text(run.path / REPORT, _page(run, sections))
    say(f"report: {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return path


def _conv_names(folder: RunFolder) -> list[str]:
    """The run's conv layers, in order, from its config."""
    return [spec["name"] for spec in folder.config.model.layers if spec["type"] == "conv"]


def _torch_free_sections(folder: RunFolder, convs: list[str]) -> list[tuple[str, Callable[[], str]]]:
    """The sections drawn from the test pass and the class centroids, which need no torch where the numpy model
    serves: (name, make)."""
    return [("evaluation", lambda: _section_evaluation(folder)),
            ("class patterns", lambda: _section_patterns(folder, convs))]


def _start_child(folder: RunFolder, function: str, *args: str, lines: bool = False, nice: int = 0,
                 wanted: bool = True, only_early: bool = False) -> subprocess.Popen | None:
    """A process that calls ``function(run folder, *args)`` of this module, a torch-free job that keeps its
    results in the run's cache (with ``lines``, it also talks on stdout), ``nice`` steps below this process's
    priority (and its own children with it): the one the command line started early for it
    (``child_process.started_early``), else a new one (none with ``only_early``: a job worth a process only
    beside the command's imports). None where the numpy model does not serve, the folder is a loaded run's (its
    weights may not be the file's), or the job is not ``wanted`` (its results are kept): an early one is then
    stopped.

    A pass over many images runs there, not in a thread: in a thread it would share the interpreter's lock with
    torch's import and the drawing, whose Python holds it while the pass's workers wait for it between numpy
    calls (the seed model's test pass beside a busy Python thread: 0.7 s alone, 9.8 s beside it). It computes
    the same bits as this process would; where it fails, this process computes what it finds missing (and
    meets the same error, if any, as a one-line message).
    """
    early = child_process.take(function, folder.path, *args)
    if not wanted or folder.checkpoint is None or folder.numpy_model() is None:
        child_process.end(early, wait=False)
        return None
    if early is not None or only_early:
        return early
    return child_process.start(function, folder.path, *args, lines=lines, nice=nice)


def _child_sections(line: str) -> dict[str, tuple[str, float]]:
    """The sections in the child's last line: name -> (HTML, seconds); none where it failed."""
    try:
        return {what: (str(html_), float(seconds)) for what, (html_, seconds) in json.loads(line).items()}
    except (ValueError, TypeError):
        return {}


def write_child_sections(run_dir: str) -> None:
    """In the report's child process: keep the test pass in the run's cache and say so in a line on stdout, then
    write one line of JSON with the torch-free sections, name -> [HTML, seconds]; nothing where the numpy model
    does not serve (the report makes them itself)."""
    lines, sys.stdout = sys.stdout, sys.stderr  # whatever else prints, prints elsewhere
    folder = as_folder(run_dir, "cpu")
    if folder.numpy_model() is None:
        return
    convs = _conv_names(folder)
    test_pass(folder).want(means=convs, class_sums=convs[-1:], logits=True)
    print("test pass kept", file=lines, flush=True)
    made = {what: _timed(make) for what, make in _torch_free_sections(folder, convs) if convs or what == "evaluation"}
    print(json.dumps(made), file=lines, flush=True)


def _timed(make: Callable[[], str]) -> tuple[str, float]:
    """(``make()``, the seconds it took)."""
    started = time.perf_counter()
    return make(), time.perf_counter() - started


def _section_run(run: Run) -> str:
    from cnnlab.model import format_table

    last = run.history[-1] if run.history else {}
    facts = [("run", str(run.path)), ("epochs", str(len(run.history))),
             ("last val_accuracy", f"{last.get('val_accuracy', float('nan')):.4f}"),
             ("last val_loss", f"{last.get('val_loss', float('nan')):.4f}")]
    curves = run.path / "curves.png"
    if not curves.exists() and run.history:
        plots.save_figure(plots.curves_figure(run.history), run.path / INSPECT_DIR / "curves.png")
        curves = run.path / INSPECT_DIR / "curves.png"
    return (f"<h2>Run</h2>{_facts(facts)}"
            + (_img(curves, "accuracy and loss per epoch") if curves.exists() else "<p>no epochs yet</p>")
            + f"<h3>Layers</h3><pre>{html.escape(format_table(run.model))}</pre>"
            + f"<details><summary>Config (config.toml)</summary><pre>{html.escape(run.config.to_toml())}</pre>"
            + "</details>")


def _section_evaluation(folder: RunFolder) -> str:
    written = evaluation_pictures(folder)
    s = written.summary
    rows = "".join(f"<tr><td>{html.escape(c)}</td><td>{'-' if a is None else f'{a:.4f}'}</td></tr>"
                   for c, a in s["per_class_accuracy"].items())
    confusion, gallery = written.pngs()
    return ("<h2>Evaluation on the test set</h2>"
            + _facts([("images", str(s["images"])), ("accuracy", f"{s['accuracy']:.4f}"),
                      ("loss (cross-entropy)", f"{s['loss']:.4f}"), ("correct", str(s["correct"]))])
            + f"<div class='row'>{_img(confusion, 'confusion matrix')}"
            + f"<table><tr><th>class</th><th>accuracy</th></tr>{rows}</table></div>"
            + _img(gallery, "most confident mistakes"))


def _section_activations(folder: RunFolder, image: int) -> str:
    grids = activation_pictures(folder, "all", [image]).pngs()
    cams = saliency_pictures(folder, [image]).pngs()
    return (f"<h2>Activations of test image {image}</h2><p>What each map's activation function produced, "
            "on one colour scale per layer.</p>"
            + "".join(_img(p, p.stem) for p in grids)
            + f"<h3>Saliency</h3>{_img(cams[0], cams[0].stem)}")


def _section_filters(folder: RunFolder, convs: list[str]) -> str:
    parts = ["<h2>Filter patterns</h2><p>Per map, an input found by gradient ascent from noise that maximizes "
             "the map's mean activation; the label gives the map and the pattern's activation over the average "
             "test image's.</p>"]
    every_map_patterns(folder.run(), convs)  # side by side; the pictures below take them from here
    for layer in convs:
        written = filter_pictures(folder, layer)
        s = written.summary
        parts.append(f"<h3>{html.escape(layer)}</h3>" + _facts(_ratio_facts(s)) + _img(written.pngs()[0], layer))
    return "".join(parts)


def _ratio_facts(s: dict[str, Any]) -> list[tuple[str, str]]:
    ratio, ratio_max = np.asarray(s["ratio"]), np.asarray(s["ratio_max"])
    live = np.asarray(s["test_max"]) > 0
    return [("maps", str(len(ratio))), ("seconds", f"{s['seconds']:.1f}"),
            ("pattern / average test image: min, median",
             f"{np.nanmin(ratio[live]) if live.any() else float('nan'):.2f}, "
             f"{np.nanmedian(ratio[live]) if live.any() else float('nan'):.2f}"),
            ("maps where the pattern beats every test image", f"{int((ratio_max[live] > 1).sum())} of {int(live.sum())}"
             + (f" ({int((~live).sum())} maps no test image activates)" if (~live).any() else ""))]


def _section_patterns(folder: RunFolder, convs: list[str]) -> str:
    layer = convs[-1] if convs else act.last_conv_layer(folder.run().model)  # (which says there is none)
    written = pattern_pictures(folder, layer)
    s = written.summary
    heat, *classes = written.pngs()
    return (f"<h2>Class patterns of {html.escape(layer)}</h2>"
            + _facts([("nearest-class-pattern accuracy (test)", f"{s['nearest_accuracy']:.4f}"),
                      ("network accuracy (test)", f"{s['network_accuracy']:.4f}")])
            + "<p>Nearest class pattern: an image's vector of per-map mean activations, compared by cosine "
              "similarity with each class's mean vector over the training images.</p>"
            + _img(heat, "classes x maps")
            + "<details><summary>Average maps per class</summary>"
            + "".join(_img(p, p.stem) for p in classes) + "</details>")


def _facts(rows: list[tuple[str, str]]) -> str:
    cells = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    return f"<table class='facts'>{cells}</table>"


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f"<figure><img src='data:image/png;base64,{data}' alt='{html.escape(alt)}'></figure>"


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
pre { background: #f6f6f6; padding: .8em; overflow-x: auto; font-size: .8em; }
img { max-width: 100%; height: auto; } figure { margin: 1em 0; }
table { border-collapse: collapse; margin: .5em 0; font-size: .9em; }
td, th { border: 1px solid #ddd; padding: .2em .6em; text-align: left; }
.row { display: flex; gap: 2em; align-items: flex-start; flex-wrap: wrap; }
"""


def _page(run: Run, sections: list[str]) -> str:
    import torch

    made = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            "<link rel='icon' href='data:,'>"  # no favicon request
            f"<title>cnnlab report: {html.escape(run.path.name)}</title><style>{_CSS}</style></head><body>"
            f"<h1>cnnlab report: {html.escape(run.path.name)}</h1>"
            f"<p>cnnlab {__version__}, torch {torch.__version__}, written {made}</p>"
            + "".join(sections) + "</body></html>\n")

