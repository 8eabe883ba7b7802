"""One writer per run folder: a lock file that names its holder, refused at once to a second writer.

``RUN/.lock`` holds one JSON line, ``{"pid": ..., "action": ..., "since": ...}``, and is held with an exclusive
``flock`` for as long as the writer (train, resume, reset) runs. The kernel drops the ``flock`` when its process
dies however it dies (SIGKILL, OOM killer), so a lock file left by a dead writer is stale by construction: the
next writer gets the ``flock``, sees the dead pid in the file, says so and takes over. A second writer while the
first lives gets one line naming the first one's pid and action. Readers (evaluate, activations, report, the
lab) never take the lock: they read the checkpoint manifest, which is always complete (see ``store``).
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import json
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from cnnlab.errors import CnnlabError
from cnnlab.files import fsync_dir

LOCK = ".lock"
HOLDER_WAITS = 50  # reads of an empty lock file, 10 ms apart, before its holder counts as unnamed


class RunLocked(CnnlabError):
    """Another live process is writing the run folder."""


@contextmanager
def writer_lock(run_dir: str | Path, action: str, echo: Callable[[str], None] | None = None) -> Iterator[Path]:
    """Hold the run folder's writer lock for the duration of the ``with`` block.

    Args:
        run_dir: the run folder (it must exist).
        action: what the writer does, for the other processes' message (e.g. ``"cnnlab resume"``).
        echo: where to say that a stale lock of a dead process was taken over (None = silent).

    Raises:
        RunLocked: another live process holds the lock; the message names its pid and action.
    """
    path = Path(run_dir) / LOCK
    fd = _acquire(path, action, echo)
    try:
        yield path
    finally:
        try:
            os.unlink(path)  # while still holding the flock, so no one can lock this inode and think it current
        except FileNotFoundError:
            pass
        os.close(fd)


def holder(run_dir: str | Path) -> dict | None:
    """Return the live writer of ``run_dir`` as ``{"pid", "action", "since"}``, or None when there is none."""
    path = Path(run_dir) / LOCK
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _holders_record(fd) or {"pid": None, "action": "unknown", "since": ""}
        return None
    finally:
        os.close(fd)


def _acquire(path: Path, action: str, echo: Callable[[str], None] | None) -> int:
    for _ in range(20):  # another writer may unlink the file between our open and our flock: try again
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise CnnlabError(f"cannot lock {path.parent} for writing: {exc.strerror or exc}; "
                              "the run folder must be writable") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = _holders_record(fd)
            os.close(fd)
            raise RunLocked(_busy_message(path.parent, other)) from None
        if not _same_file(fd, path):
            os.close(fd)
            continue
        stale = _read(fd)
        if stale and echo:
            echo(f"note: {path.parent}: took over the lock of pid {stale.get('pid')} ({stale.get('action')}), "
                 "which is no longer running")
        _write(fd, {"pid": os.getpid(), "action": action, "since": _now()})
        fsync_dir(path.parent)
        return fd
    raise CnnlabError(f"cannot lock {path.parent}: other processes keep taking and dropping its lock; try again")


def _busy_message(run_dir: Path, other: dict | None) -> str:
    if not other:
        return f"{run_dir} is being written by another process; wait until it ends, then try again"
    return (f"{run_dir} is in use: pid {other.get('pid')} is running '{other.get('action')}' on it "
            f"(since {other.get('since')}); wait until it ends or stop it, then try again")


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def _holders_record(fd: int) -> dict | None:
    """The record of the process holding the lock of ``fd``. It writes its record right after it takes the lock
    (truncating a stale one first), so an empty file is read again for up to half a second before the answer is
    None: a second ``cnnlab train`` started at the same moment as the first was refused with the message that
    names no one."""
    for _ in range(HOLDER_WAITS):
        record = _read(fd)
        if record:
            return record
        time.sleep(0.01)
    return _read(fd)


def _read(fd: int) -> dict | None:
    try:
        data = os.pread(fd, 4096, 0)
        value = json.loads(data.decode("utf-8")) if data.strip() else None
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _write(fd: int, info: dict) -> None:
    data = (json.dumps(info) + "\n").encode("utf-8")
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)
    os.fsync(fd)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
