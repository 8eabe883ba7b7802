"""Small fake MNIST files for the data tests: IDX bytes, a matching ``files=`` table, folders and wheels."""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np

from cnnlab import data
from cnnlab.data import acquisition

NAMES = (data.TRAIN_IMAGES, data.TRAIN_LABELS, data.TEST_IMAGES, data.TEST_LABELS)


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array as IDX, written independently of the code under test."""
    header = b"\x00\x00\x08" + bytes([array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def fake_arrays(n_train: int = 6, n_test: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
    """Random 28x28 uint8 images and labels 0..9, keyed by canonical file name."""
    rng = np.random.default_rng(seed)
    return {
        data.TRAIN_IMAGES: rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        data.TRAIN_LABELS: rng.integers(0, 10, n_train, dtype=np.uint8),
        data.TEST_IMAGES: rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        data.TEST_LABELS: rng.integers(0, 10, n_test, dtype=np.uint8),
    }


def fake_blobs(**kwargs) -> dict[str, bytes]:
    """The IDX bytes of ``fake_arrays``."""
    return {name: idx_bytes(arr) for name, arr in fake_arrays(**kwargs).items()}


def table_for(blobs: dict[str, bytes]) -> dict[str, tuple[int, str]]:
    """A ``files=`` table that makes ``blobs`` the canonical files."""
    return {name: (len(blob), hashlib.md5(blob).hexdigest()) for name, blob in blobs.items()}


def write_folder(folder: Path, blobs: dict[str, bytes], gz: tuple[str, ...] = (),
                 gz_no_suffix: tuple[str, ...] = ()) -> Path:
    """Write the files; those in ``gz`` as ``NAME.gz``, those in ``gz_no_suffix`` gzipped but named ``NAME``."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, blob in blobs.items():
        if name in gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(blob))
        elif name in gz_no_suffix:
            (folder / name).write_bytes(gzip.compress(blob))
        else:
            (folder / name).write_bytes(blob)
    return folder


def pickle_gz(arrays: dict[str, np.ndarray], n_valid: int = 2, protocol: int = 4) -> bytes:
    """The classic mnist.pkl.gz layout: gzip(pickle(((train), (valid), (test)))), floats v/256, int64 labels."""
    def part(images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return (images.reshape(len(images), 784).astype(np.float32) / np.float32(256), labels.astype(np.int64))

    tx, ty = arrays[data.TRAIN_IMAGES], arrays[data.TRAIN_LABELS]
    cut = len(tx) - n_valid
    obj = (part(tx[:cut], ty[:cut]), part(tx[cut:], ty[cut:]),
           part(arrays[data.TEST_IMAGES], arrays[data.TEST_LABELS]))
    return gzip.compress(pickle.dumps(obj, protocol=protocol))


def wheel_with(path: Path, member_bytes: bytes) -> Path:
    """A zip at ``path`` holding ``member_bytes`` as the wheel's mnist.pkl.gz."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("mnist/__init__.py", "")
        archive.writestr(acquisition.PYPI_MEMBER, member_bytes)
    path.write_bytes(buf.getvalue())
    return path
