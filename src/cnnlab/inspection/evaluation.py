"""Evaluation on a labelled set: accuracy, loss, per-class accuracy, confusion matrix, confident mistakes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from cnnlab.inspection import CHUNK

if TYPE_CHECKING:
    import torch

    from cnnlab.model import CnnModel


@dataclass
class Evaluation:
    """How a model does on a labelled set.

    Attributes:
        loss: mean cross-entropy (the data term only, without the regularizer's penalty).
        accuracy: the share of correct predictions.
        per_class_accuracy: per true class, the share predicted correctly (classes,); nan for an absent class.
        confusion: counts, rows = true class, columns = predicted class (classes, classes).
        labels: the true classes (N,).
        predictions: the predicted classes (N,).
        probabilities: the softmax outputs (N, classes).
    """

    loss: float
    accuracy: float
    per_class_accuracy: np.ndarray
    confusion: np.ndarray
    labels: np.ndarray
    predictions: np.ndarray
    probabilities: np.ndarray

    def to_dict(self, classes: tuple[str, ...] | list[str] | None = None) -> dict[str, Any]:
        """A JSON-safe summary: the figures and the confusion matrix, not the per-image arrays.

        ``classes`` names the classes (one per label); the per-class accuracies are keyed by these names
        (default ``"0"``, ``"1"``, ...) and the confusion matrix's rows and columns follow their order.
        """
        names = _names(classes, len(self.per_class_accuracy))
        return {"images": int(len(self.labels)), "accuracy": self.accuracy, "loss": self.loss,
                "correct": int(np.trace(self.confusion)),
                "per_class_accuracy": {name: _number(a) for name, a in zip(names, self.per_class_accuracy)},
                "confusion": {"rows": "true class", "columns": "predicted class", "classes": names,
                              "matrix": self.confusion.tolist()}}


def evaluate(model: CnnModel, x: torch.Tensor, y: torch.Tensor | np.ndarray, num_classes: int | None = None,
             chunk: int = CHUNK) -> Evaluation:
    """Evaluate ``model`` on normalized images ``x`` (N, 1, 28, 28) with labels ``y`` (N,).

    The forward passes run in inference mode in chunks of 256 images: a chunk's largest activation then stays
    under glibc's 32 MB mmap threshold, so its memory is reused instead of mapped and page-faulted afresh
    (on the AMD EPYC, the seed model's 10,000 test images: logits 0.27 s in chunks of 256 against 0.30-0.37 s
    in chunks of 2,000; the report's pass that also keeps every conv layer's map means, 0.5 s against 2.4-2.75 s).
    The model's train/eval mode is restored.
    """
    from cnnlab.metrics import predict_logits

    return from_logits(predict_logits(model, x, batch_size=chunk), y, num_classes or model.num_classes)


def from_logits(logits: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray, num_classes: int) -> Evaluation:
    """The ``Evaluation`` of a model whose logits (N, classes) for the images with labels ``y`` are at hand.

    Counted in numpy (float64 for the loss) on the CPU, whatever device gave the logits, so that a kept pass
    gives its figures without torch.
    """
    labels = _cpu_array(y).astype(np.int64)
    logits = _cpu_array(logits).astype(np.float32)
    k = num_classes
    if len(labels) == 0:
        empty = np.zeros((k, k), dtype=np.int64)
        return Evaluation(float("nan"), float("nan"), np.full(k, np.nan), empty, np.zeros(0, np.int64),
                          np.zeros(0, np.int64), np.zeros((0, k), np.float32))
    predictions = logits.argmax(axis=1)
    confusion = np.bincount(labels * k + predictions, minlength=k * k).reshape(k, k)
    per_class = np.diag(confusion) / np.where(confusion.sum(axis=1) > 0, confusion.sum(axis=1), np.nan)
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return Evaluation(loss=float(-log_probs[np.arange(len(labels)), labels].mean()),
                      accuracy=float((predictions == labels).mean()),
                      per_class_accuracy=per_class, confusion=confusion, labels=labels,
                      predictions=predictions, probabilities=np.exp(log_probs).astype(np.float32))


def _cpu_array(values: Any) -> np.ndarray:
    """A numpy array of ``values``: an array, or a tensor on any device (copied to the CPU)."""
    if hasattr(values, "detach"):
        values = values.detach().float().cpu() if values.is_floating_point() else values.detach().cpu()
        return values.numpy()
    return np.asarray(values)


def confident_mistakes(ev: Evaluation, count: int = 24) -> np.ndarray:
    """Indices of the wrongly classified images, most confident (highest predicted probability) first."""
    wrong = np.flatnonzero(ev.predictions != ev.labels)
    confidence = ev.probabilities[wrong, ev.predictions[wrong]]
    return wrong[np.argsort(-confidence, kind="stable")][:count]


def _names(classes: tuple[str, ...] | list[str] | None, k: int) -> list[str]:
    names = list(classes or [])
    return names + [str(c) for c in range(len(names), k)]  # a model with more outputs than names: numbered


def _number(value: float) -> float | None:
    return None if np.isnan(value) else float(value)
