"""Real child processes for the reliability tests: the ``cnnlab`` command line run in a forked child.

The children come from a fork server that has already imported torch and cnnlab (and loaded the native
kernels), so each one starts in a fraction of a second; each is still a separate process that can be killed,
given a file-size limit or made to kill itself at the k-th write (``CNNLAB_FAULT_AFTER_WRITES``).
The fork server is started with no native kernels loaded, and the children run without them.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import resource
import traceback
import sys
from pathlib import Path

import io

import torch._dynamo  # noqa: F401  (torch's optimizers import it on first use: 4 s on a loaded machine)

import cnnlab.cli  # noqa: F401  (imported here so the fork server holds it)
import cnnlab.cli_inspect  # noqa: F401
import cnnlab.cli_interop  # noqa: F401
import cnnlab.run  # noqa: F401

cnnlab.cli.build_parser()  # imports every command module now: a child switched to another user may not read them
from cnnlab import plots
from cnnlab.files import FAULT_ENV, write_events

# One curves picture drawn in the fork server: matplotlib's fonts and caches are then ready in every child.
_row = {"epoch": 1, "step": 1, "lr": 0.1, "loss": 1.0, "accuracy": 0.5, "val_loss": 1.0, "val_accuracy": 0.5,
        "seconds": 1.0}
plots.curves_figure([_row]).savefig(io.BytesIO(), format="png")

CTX = mp.get_context("forkserver")
CTX.set_forkserver_preload([__name__])

# A tiny run that is quick even on a loaded 2-core machine: 2 mini-batches per epoch, one thread.
QUICK = ["--preset", "tiny", "--no-progress", "--set", "data.limit_train=64", "--set", "data.limit_test=64",
         "--set", "train.threads=1"]


def _child(args: list[str], log: str, env: dict[str, str], fsize: int | None, uid: int | None) -> None:
    # The native kernels are not under test here, and a child killed while it builds them would leave a partial
    # library (and a line about removing it in the next child's output): the children use torch's own ops.
    os.environ.update({"CNNLAB_NATIVE": "0", **env})
    # No byte-code writes: under a file-size limit CPython's writer keeps a short write as the module's .pyc
    # (it does not check the count), and every later import of that module in the virtual env then fails
    # ("EOFError: marshal data too short"; seen when a child imported a module nothing had compiled yet).
    sys.dont_write_bytecode = True
    if fsize is not None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    if uid is not None:  # a user without write permission where root would have it
        import encodings.cp437  # noqa: F401  (zipfile's codec, imported on first use: that user may not
        #                         read this Python's library, under /root)
        os.setgid(uid)
        os.setuid(uid)
    code = 99
    try:
        code = cnnlab.cli.main(args)
        if os.environ.get(FAULT_ENV):
            print(f"write events: {write_events()}")
    except BaseException:  # os._exit below would swallow the traceback: put it in the log
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        try:  # the parent's fallback when the fork server loses the exit status
            Path(f"{log}.exit").write_text(str(code))
        except OSError:  # e.g. a child switched to a user who may not write there
            pass
        os._exit(code)


def start(args: list[str], log: str | Path, env: dict[str, str] | None = None, fsize: int | None = None,
          uid: int | None = None):
    """Start ``cnnlab ARGS`` in a child process (output to ``log``, as user ``uid`` if given); return it."""
    proc = CTX.Process(target=_child, args=(list(args), str(log), dict(env or {}), fsize, uid))
    proc.start()
    return proc


def cli(args: list[str], log: str | Path, env: dict[str, str] | None = None, fsize: int | None = None,
        timeout: float = 300, uid: int | None = None) -> tuple[int, str]:
    """Run ``cnnlab ARGS`` in a child process; return its exit code (-9 when killed) and its output."""
    proc = start(args, log, env, fsize, uid)
    proc.join(timeout)
    if proc.exitcode is None:
        proc.kill()
        proc.join()
        raise TimeoutError(f"cnnlab {' '.join(args)} did not end in {timeout} s")
    code, saved = proc.exitcode, Path(f"{log}.exit")
    if code == 255 and saved.exists():
        # CPython's forkserver Popen answers 255 when it cannot read a child's exit status from the fork server
        # (seen once in a CI run, with children started from two threads); the child wrote its own code
        code = int(saved.read_text())
    return code, Path(log).read_text()
