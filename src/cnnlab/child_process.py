"""Torch-free jobs of ``cnnlab.report`` in a process beside the command that needs them.

``cnnlab.report`` runs a pass over many images (the class centroids' 60,000 training images) and the report's
torch-free sections in a child process (see ``cnnlab.report._start_child`` for why not a thread); ``start``
starts one. A command line can start its job before it imports and reads anything (``started_early``): the
child's own interpreter start and imports (0.25-0.3 s) then run beside the command's instead of after them, and
``take`` hands the child to the code that would have started it (``cnnlab patterns`` with nothing kept: 3.60 ->
3.40 s, medians of 8 pairs, each faster; ``cnnlab report`` 7.72 -> 7.47 s, 6 pairs; ``cnnlab evaluate``, whose
test pass runs beside its matplotlib import: 1.43 -> 1.32 s, 10 pairs, each faster; AMD EPYC Zen 4, 2 cores).
This module imports nothing of cnnlab, so a command can use it before its own imports.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

NICE = 10  # the report's child runs this many steps below the command (see cnnlab.report.write_report)

_early: dict[tuple[str, ...], subprocess.Popen] = {}  # started by started_early, not taken yet


def start(function: str, run_dir: str | Path, *args: str, lines: bool = False, nice: int = 0) -> subprocess.Popen:
    """Start a process that calls ``cnnlab.report.<function>(run_dir, *args)``, ``nice`` steps below this
    process's priority (its own children with it); its output is dropped, but for ``lines``: stdout is then a
    pipe (``line``)."""
    source = str(Path(__file__).resolve().parents[1])  # the child imports this cnnlab, whatever its sys.path
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [source, os.environ.get("PYTHONPATH")]))}
    # (its files are written and closed when the function returns: it ends without the interpreter's teardown)
    code = (f"import os, sys; hasattr(os, 'nice') and os.nice({int(nice)}); from cnnlab.report import {function}; "
            f"{function}(*sys.argv[1:]); os._exit(0)")
    return subprocess.Popen([sys.executable, "-c", code, str(run_dir), *args], env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE if lines else subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            text=True)


@contextmanager
def started_early(function: str, run_dir: str | Path, *args: str, lines: bool = False, nice: int = 0,
                  unless: Callable[[], bool] | None = None) -> Iterator[None]:
    """``start`` the job now, for ``take`` to hand over inside the block; one not taken by its end (the results
    were kept already, the run's model is one the child cannot compute, the command failed) is stopped then.
    ``unless`` (a cheap look, asked first) says the job may not be needed (results that may be kept): no child
    is started then, and the command starts one later where it needs it."""
    key = _key(function, run_dir, *args)
    if unless is not None and unless():
        child = None
    else:
        try:
            child = start(function, run_dir, *args, lines=lines, nice=nice)
        except OSError:  # no process to spare now: the command starts its child later, or makes everything itself
            child = None
    if child is not None:
        _early[key] = child
    try:
        yield
    finally:
        end(_early.pop(key, None), wait=False)


def take(function: str, run_dir: str | Path, *args: str) -> subprocess.Popen | None:
    """The child ``started_early`` started for these arguments (the caller now ends it), or None."""
    return _early.pop(_key(function, run_dir, *args), None)


def end(child: subprocess.Popen | None, wait: bool) -> None:
    """Wait for the child to finish (``wait``), or stop it."""
    if child is None:
        return
    if not wait:
        child.kill()
    child.wait()
    if child.stdout is not None:
        child.stdout.close()


@contextmanager
def beside(child: subprocess.Popen | None) -> Iterator[None]:
    """Run the block beside ``child``, then wait for it to finish; where the block raises, stop it instead."""
    try:
        yield
    except BaseException:
        end(child, wait=False)
        raise
    end(child, wait=True)


def line(child: subprocess.Popen) -> str:
    """The child's next line on stdout ("" once it has ended)."""
    return child.stdout.readline() if child.stdout is not None else ""


def _key(function: str, run_dir: str | Path, *args: str) -> tuple[str, ...]:
    return (function, os.path.realpath(run_dir), *map(str, args))
