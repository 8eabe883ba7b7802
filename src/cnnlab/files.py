"""Atomic file writes (a temporary file beside the target, then a rename) and cnnlab's home folder."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

from cnnlab.errors import CnnlabError


def home_dir(home: str | Path | None = None) -> Path:
    """Return cnnlab's own folder for caches: ``home``, else ``$CNNLAB_HOME``, else ``~/.cache/cnnlab``."""
    return Path(home or os.environ.get("CNNLAB_HOME") or Path.home() / ".cache" / "cnnlab").expanduser()


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` and move the finished file to ``path`` in one rename.

    Args:
        path: the final file name.
        write: a function that writes the whole file at the path it is given.

    Returns:
        The final path. A reader never sees a half-written file, and a failure leaves the old file as it was.
    """
    path = Path(path)
    if path.is_dir():
        raise CnnlabError(f"cannot write {path}: it is a folder; name a file")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise CnnlabError(f"cannot write {path}: {exc.strerror or exc}; "
                          "choose a path in a folder you can write") from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the user's usual mode
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write(path, lambda p: p.write_bytes(data))


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")
