"""Class patterns: per class, the mean activation of every map; and a classifier that uses only those.

The nearest-class-pattern classifier describes an image by the mean activation of each map of one layer
(a vector of length maps), takes the class means of those vectors over the training images, and predicts the
class whose mean is most similar (cosine) to the image's vector. Its test accuracy next to the network's
says how much of the decision is already readable from that layer's average map activity.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from cnnlab.inspection import CHUNK, cache
from cnnlab.inspection.shared import SharedPass

if TYPE_CHECKING:
    import torch

    from cnnlab.model import CnnModel


@dataclass
class ClassPatterns:
    """Mean activations per class of one layer.

    Attributes:
        layer: the layer name.
        counts: images per class (classes,).
        map_images: the average map images per class, (classes, maps, H, W); (classes, units) for flat layers.
        means: the mean activation of every map per class, (classes, maps): ``map_images`` averaged over H, W.
        features: per image, the mean activation of every map (N, maps): what the nearest-class-pattern
            classifier compares.
    """

    layer: str
    counts: np.ndarray
    map_images: np.ndarray
    means: np.ndarray
    features: np.ndarray


@dataclass
class NearestPattern:
    """The nearest-class-pattern classifier and how it does.

    Attributes:
        layer: the layer whose map means describe an image.
        centroids: class means of the map-mean vectors over the training images, (classes, maps).
        predictions: the predicted class of each test image (N,).
        accuracy: the share of test images it classifies correctly.
    """

    layer: str
    centroids: np.ndarray
    predictions: np.ndarray
    accuracy: float


def class_patterns(model: CnnModel, x: torch.Tensor, y: torch.Tensor | np.ndarray, layer: str,
                   num_classes: int | None = None, chunk: int = CHUNK) -> ClassPatterns:
    """Average the activation output of ``layer`` (a layer name) over the images of each class: the one-layer
    case of ``SharedPass``, whose arguments the others are. Only one chunk's maps are in memory at a time.

    Returns:
        Per class the count, the average map images and the mean activation of every map. A class without
        images has zeros.
    """
    shared = SharedPass(model, x, y, chunk=chunk, num_classes=num_classes)
    shared.want(means=[layer], class_sums=[layer])
    return patterns_from_sums(layer, shared.class_sums(layer), shared.labels, shared.means(layer))


def patterns_from_sums(layer: str, sums: np.ndarray, labels: np.ndarray, features: np.ndarray) -> ClassPatterns:
    """The ``ClassPatterns`` of ``layer`` from the per-class sums of its activations (float64 (classes, *shape)),
    the labels (N,) and the per-image map means (N, maps) (as ``cnnlab.inspection.shared.SharedPass`` keeps
    them)."""
    sums = np.asarray(sums, dtype=np.float64)
    k = sums.shape[0]
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=k)[:k]
    images = (sums / np.maximum(counts, 1).reshape(-1, *[1] * (sums.ndim - 1))).astype(np.float32)
    means = images.mean(axis=(2, 3)) if images.ndim == 4 else images
    return ClassPatterns(layer, counts, images, means, features)


def fit_centroids(features: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Return the mean feature vector of each class, (classes, features); zeros for a class without images."""
    labels = np.asarray(labels)
    sums = np.zeros((num_classes, features.shape[1]), dtype=np.float64)
    for c in np.unique(labels):  # one masked sum per class: np.add.at took 0.3 s for 60,000 images
        sums[c] = features[labels == c].sum(axis=0, dtype=np.float64)
    counts = np.bincount(labels, minlength=num_classes)[:num_classes]
    return (sums / np.maximum(counts, 1)[:, None]).astype(np.float32)


def nearest_by_cosine(features: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Return, per row of ``features``, the index of the centroid with the highest cosine similarity."""
    a = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    b = centroids / np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
    return (a @ b.T).argmax(axis=1)


def nearest_pattern(model: CnnModel, train_x: torch.Tensor, train_y: torch.Tensor | np.ndarray,
                    test_x: torch.Tensor | None, test_y: torch.Tensor | np.ndarray, layer: str,
                    test_features: np.ndarray | None = None, chunk: int = CHUNK) -> NearestPattern:
    """Fit the nearest-class-pattern classifier of ``layer`` on training images and score it on test images.

    Args:
        model: the network.
        train_x: normalized training images; their map means give the class centroids.
        train_y: their labels.
        test_x: normalized test images (or None with ``test_features``).
        test_y: their labels.
        layer: the layer whose per-map mean activations describe an image.
        test_features: the test images' map means if already computed (``ClassPatterns.features``).
        chunk: images per forward pass.
    """
    from cnnlab.inspection.activations import map_means

    train_y = train_y.numpy() if hasattr(train_y, "numpy") else np.asarray(train_y)
    centroids = fit_centroids(map_means(model, train_x, layer, chunk=chunk), train_y, model.num_classes)
    if test_features is None:
        test_features = map_means(model, test_x, layer, chunk=chunk)
    return score_nearest(layer, centroids, test_features, test_y)


def score_nearest(layer: str, centroids: np.ndarray, test_features: np.ndarray,
                  test_y: torch.Tensor | np.ndarray) -> NearestPattern:
    """The nearest-class-pattern classifier of ``centroids`` (classes, maps) on test images' map means."""
    predictions = nearest_by_cosine(test_features, centroids)
    accuracy = float((predictions == np.asarray(test_y)).mean()) if len(predictions) else float("nan")
    return NearestPattern(layer, centroids, predictions, accuracy)


def cached_centroids(run_dir: str | Path, weights: str, layer: str, images: np.ndarray, labels: np.ndarray,
                     features: Callable[[], np.ndarray], prepare_key: str, num_classes: int) -> np.ndarray:
    """``fit_centroids`` of the map means of ``layer`` over the raw training ``images`` (uint8 (N, 28, 28)) with
    ``labels``, computed once per weights and images, kept in ``<run_dir>/cache/centroids/``.

    Args:
        weights: the weights' hash (``cache.weights_hash``).
        features: computes the map means (N, maps) of ``images`` (called only when nothing is kept).
        prepare_key: names the normalization (e.g. the normalizer's record): another one misses the cache.
        num_classes: the centroids' rows.
    """
    path = centroids_path(run_dir, weights, layer, cache.arrays_hash(images, labels), prepare_key, num_classes)

    def compute() -> dict[str, np.ndarray]:
        return {"centroids": fit_centroids(features(), labels, num_classes)}

    return cache.cached_arrays(path, ("centroids",), compute)["centroids"]


def centroids_path(run_dir: str | Path, weights: str, layer: str, images_key: str, prepare_key: str,
                   num_classes: int) -> Path:
    """Where ``cached_centroids`` keeps the centroids of these arguments; ``images_key`` is the
    ``cache.arrays_hash`` of the training images and their labels."""
    return cache.cache_path(run_dir, "centroids", layer, [weights, layer, images_key, prepare_key, str(num_classes)])
