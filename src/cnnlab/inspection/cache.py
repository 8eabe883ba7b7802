"""Results kept in the run folder: computed once per weights and inputs, read back after.

Filter patterns (seconds of gradient ascent) and the nearest-class-pattern centroids (a pass over the
training set) depend only on the weights, the layer, the images and the settings. Each result is one
``.npz`` file in ``<run>/cache/<kind>/``, named by the layer and a SHA-256 of everything it depends on: new
weights (a resumed run) or other settings miss the cache and compute afresh, a damaged file is computed again
and replaced, and a read-only run folder computes without keeping. The files hold plain arrays (no pickles).
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from cnnlab.errors import CnnlabError
from cnnlab.files import write_bytes

CACHE_DIR = Path("cache")  # inside the run folder


def weights_hash(model: torch.nn.Module) -> str:
    """A SHA-256 of the model's parameters and buffers (names, shapes, values; memory layout aside)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        value = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{value.dtype}:{tuple(value.shape)};".encode())
        digest.update(value.numpy().tobytes() if value.dtype != torch.bfloat16 else value.float().numpy().tobytes())
    return digest.hexdigest()


def arrays_hash(*arrays: np.ndarray) -> str:
    """A SHA-256 of arrays: their dtypes, shapes and values."""
    digest = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        digest.update(f"{a.dtype.str}:{a.shape};".encode())
        digest.update(a.data)
    return digest.hexdigest()


def cache_path(run_dir: str | Path, kind: str, layer: str, parts: list[str]) -> Path:
    """Where the result of ``kind`` for ``layer`` that depends on ``parts`` (strings) is kept."""
    key = hashlib.sha256("|".join(parts).encode()).hexdigest()[:20]
    return Path(run_dir) / CACHE_DIR / kind / f"{layer}-{key}.npz"


def cached_arrays(path: Path, names: tuple[str, ...],
                  compute: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The arrays ``names`` read from ``path``; where it is missing or damaged, ``compute()``'s, written there."""
    try:
        with np.load(path, allow_pickle=False) as f:
            return {name: f[name] for name in names}
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
        pass
    arrays = compute()
    buf = io.BytesIO()
    np.savez(buf, **{name: np.asarray(arrays[name]) for name in names})
    try:
        write_bytes(path, buf.getvalue())
    except CnnlabError:  # a read-only run folder: the result is still right, only not kept
        pass
    return arrays
