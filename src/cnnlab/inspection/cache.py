"""Results kept in the run folder: computed once per weights and inputs, read back after.

Filter patterns (seconds of gradient ascent), the nearest-class-pattern centroids (a pass over the training
set) and the test pass's results (``shared.SharedPass``: logits, map means, class sums) depend only on the
weights, the layer, the images and the settings. Each result is one
``.npz`` file in ``<run>/cache/<kind>/``, named by the layer and a SHA-256 of everything it depends on: new
weights (a resumed run) or other settings miss the cache and compute afresh, a damaged file is computed again
and replaced, and a read-only run folder computes without keeping. The files hold plain arrays (no pickles).
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from safetensors import SafetensorError

from cnnlab.errors import CnnlabError
from cnnlab.files import write_bytes

if TYPE_CHECKING:
    import torch

CACHE_DIR = Path("cache")  # inside the run folder


def weights_hash(model: torch.nn.Module) -> str:
    """A SHA-256 of the model's parameters and buffers (names, dtypes, shapes, values; memory layout aside).

    It equals ``file_weights_hash`` of a safetensors file the model was loaded from, so a command can find a
    kept result from the file alone, without torch.
    """
    return named_arrays_hash(state_arrays(model))


def state_arrays(model: torch.nn.Module) -> dict[str, np.ndarray]:
    """The model's parameters and buffers as numpy arrays by their state-dict names (on the CPU; bfloat16 ones
    as float32)."""
    import torch

    def array(tensor: torch.Tensor) -> np.ndarray:
        tensor = tensor.detach().cpu()
        return (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy()

    return {name: array(t) for name, t in model.state_dict().items()}


def file_weights_hash(data: bytes) -> str | None:
    """``weights_hash`` of a model holding the weights of safetensors bytes ``data``, read without torch; None
    where numpy cannot hold them (bfloat16) or the bytes are not safetensors."""
    arrays = file_arrays(data)
    return None if arrays is None else named_arrays_hash(arrays)


def file_arrays(data: bytes) -> dict[str, np.ndarray] | None:
    """The arrays of safetensors bytes ``data``, read without torch; None where numpy cannot hold them
    (bfloat16) or the bytes are not safetensors."""
    from safetensors.numpy import load

    try:
        return load(data)
    except (SafetensorError, ValueError, TypeError, KeyError):  # KeyError: a dtype numpy lacks
        return None


def named_arrays_hash(arrays: dict[str, np.ndarray]) -> str:
    """A SHA-256 of named arrays, in name order: names, dtypes, shapes and values."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        digest.update(f"{name}:".encode())
        _update(digest, arrays[name])
    return digest.hexdigest()


def arrays_hash(*arrays: np.ndarray) -> str:
    """A SHA-256 of arrays: their dtypes, shapes and values."""
    digest = hashlib.sha256()
    for a in arrays:
        _update(digest, a)
    return digest.hexdigest()


def streamed_hash(*arrays: tuple[np.dtype, tuple[int, ...], Iterable[np.ndarray]]) -> str:
    """``arrays_hash`` of arrays given as (dtype, shape, the array's consecutive row blocks), so that a large
    array need never be whole in memory: the same digest, since SHA-256 reads its input as one stream."""
    digest = hashlib.sha256()
    for dtype, shape, blocks in arrays:
        digest.update(f"{np.dtype(dtype).str}:{tuple(shape)};".encode())
        for block in blocks:
            digest.update(np.ascontiguousarray(block, dtype=dtype).reshape(-1).view(np.uint8))
    return digest.hexdigest()


def _update(digest: "hashlib._Hash", a: np.ndarray) -> None:
    a = np.ascontiguousarray(a)
    digest.update(f"{a.dtype.str}:{a.shape};".encode())
    digest.update(a.reshape(-1).view(np.uint8))


def cache_path(run_dir: str | Path, kind: str, layer: str, parts: list[str]) -> Path:
    """Where the result of ``kind`` for ``layer`` that depends on ``parts`` (strings) is kept."""
    key = hashlib.sha256("|".join(parts).encode()).hexdigest()[:20]
    return Path(run_dir) / CACHE_DIR / kind / f"{layer}-{key}.npz"


def holds(run_dir: str | Path, kind: str, layer: str) -> bool:
    """Whether the run's cache holds a result of ``kind`` for ``layer``, for any weights and settings: a cheap
    check before the hashes that name the one file a call reads."""
    folder = Path(run_dir) / CACHE_DIR / kind
    return folder.is_dir() and any(p.name.startswith(f"{layer}-") and p.suffix == ".npz" for p in folder.iterdir())


def cached_arrays(path: Path, names: tuple[str, ...],
                  compute: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The arrays ``names`` read from ``path``; where it is missing or damaged, ``compute()``'s, written there."""
    arrays = read_arrays(path, names)
    if arrays is None:
        arrays = compute()
        keep_arrays(path, {name: arrays[name] for name in names})
    return arrays


def read_arrays(path: Path, names: tuple[str, ...]) -> dict[str, np.ndarray] | None:
    """The arrays ``names`` kept in ``path``; None where the file is missing, damaged or lacks one."""
    try:
        with np.load(path, allow_pickle=False) as f:
            return {name: f[name] for name in names}
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
        return None


def keep_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` to ``path`` atomically; in a read-only run folder, keep nothing (the result is still
    right, only computed again next time)."""
    buf = io.BytesIO()
    np.savez(buf, **{name: np.asarray(a) for name, a in arrays.items()})
    try:
        write_bytes(path, buf.getvalue(), durable=False)  # a result lost to a power cut is computed again
    except CnnlabError:
        pass
