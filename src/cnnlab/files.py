"""Atomic, durable file writes (a temporary file beside the target, fsync, one rename, fsync of the folder),
the one translation of a full disk into a user message, and cnnlab's home folder.

Every file cnnlab writes goes through ``atomic_write``, so three guarantees hold everywhere:

- a reader sees the old file or the new one, never a half-written one;
- once ``atomic_write`` returns, the new file survives a power loss (file and folder are fsynced);
- a full disk, a quota or a file-size limit (ENOSPC, EDQUOT, EFBIG) raises ``NoSpaceError`` naming the file,
  and the temporary file is removed, so the old file stays as it was.

For the fault-injection tests, ``CNNLAB_FAULT_AFTER_WRITES=k`` makes the process kill itself (SIGKILL) at the
k-th *write event*: each ``atomic_write`` has two, "temporary file complete" (before the rename) and "renamed".
"""

from __future__ import annotations

import errno
import json
import os
import signal
import tempfile
from pathlib import Path
from typing import Any, Callable

from cnnlab.errors import CnnlabError

NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
FAULT_ENV = "CNNLAB_FAULT_AFTER_WRITES"
_events = {"count": 0}


class NoSpaceError(CnnlabError):
    """A write failed for lack of space (full disk, quota, file-size limit); nothing older was touched."""

    def __init__(self, path: str | Path):
        super().__init__(no_space_message(path))
        self.path = Path(path)


def no_space_message(path: str | Path | None) -> str:
    """The one line for a full disk: which file, and that the last checkpoint is intact."""
    return f"no space left writing {path or 'a file'}; nothing of the last checkpoint was lost"


def home_dir(home: str | Path | None = None) -> Path:
    """Return cnnlab's own folder for caches: ``home``, else ``$CNNLAB_HOME``, else ``~/.cache/cnnlab``."""
    return Path(home or os.environ.get("CNNLAB_HOME") or Path.home() / ".cache" / "cnnlab").expanduser()


def atomic_write(path: str | Path, write: Callable[[Path], None], durable: bool = True) -> Path:
    """Call ``write(tmp_path)`` and move the finished, fsynced file to ``path`` in one rename.

    Args:
        path: the final file name.
        write: a function that writes the whole file at the path it is given.
        durable: fsync the file and its folder. False for what can be made again (pictures, cached results):
            still never half-written for a reader, but a power cut may lose the newest version.

    Returns:
        The final path. A reader never sees a half-written file, a failure leaves the old file as it was, and
        the new file is durable (the file and its folder are fsynced) when this returns.

    Raises:
        NoSpaceError: the disk, a quota or the file-size limit ran out.
        CnnlabError: the folder cannot be written (permission, a file in the way).
    """
    path = Path(path)
    if path.is_dir():
        raise CnnlabError(f"cannot write {path}: it is a folder; name a file")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise _user_error(exc, path) from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the user's usual mode
        if durable:
            fsync_file(tmp_path)
        fault_point(path, "written")
        os.replace(tmp_path, path)
        if durable:
            fsync_dir(path.parent)
    except OSError as exc:
        if exc.errno in NO_SPACE_ERRNOS:
            raise NoSpaceError(path) from None
        raise
    finally:
        if tmp_path.exists():
            tmp_path.unlink()
    fault_point(path, "renamed")
    return path


def _user_error(exc: OSError, path: Path) -> CnnlabError:
    if exc.errno in NO_SPACE_ERRNOS:
        return NoSpaceError(path)
    return CnnlabError(f"cannot write {path}: {exc.strerror or exc}; choose a path in a folder you can write")


def fsync_file(path: str | Path) -> None:
    """Flush a file's data to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | Path) -> None:
    """Flush a folder's entries (new names, renames, removals) to the disk; a no-op where folders cannot be."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:  # some file systems refuse fsync on a folder; their renames are then as good as it gets
        if exc.errno not in (errno.EINVAL, errno.EBADF, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def fault_point(path: Path, stage: str) -> None:
    """Count one write event; at the k-th, with ``CNNLAB_FAULT_AFTER_WRITES=k``, die at once by SIGKILL.

    With ``CNNLAB_FAULT_TRACE=FILE`` as well, each event is appended to FILE as ``k stage path``.
    """
    limit = os.environ.get(FAULT_ENV)
    if not limit:
        return
    _events["count"] += 1
    trace = os.environ.get("CNNLAB_FAULT_TRACE")
    if trace:
        with open(trace, "a", encoding="utf-8") as f:
            f.write(f"{_events['count']} {stage} {path}\n")
    if _events["count"] == int(limit):
        os.kill(os.getpid(), signal.SIGKILL)


def write_events() -> int:
    """Write events counted so far in this process (only while ``CNNLAB_FAULT_AFTER_WRITES`` is set)."""
    return _events["count"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes(path: str | Path, data: bytes, durable: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically (and durably, unless ``durable`` is False: see ``atomic_write``)."""
    return atomic_write(path, lambda p: p.write_bytes(data), durable)


def write_text(path: str | Path, text: str, durable: bool = True) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return write_bytes(path, text.encode("utf-8"), durable)


def write_json(path: str | Path, obj: Any, durable: bool = True) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n", durable)
