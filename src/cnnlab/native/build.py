"""Build and load the native kernels: one compiler call, once per machine and CPU, under a lock that dies with
its process.

The kernels are plain C++ over float pointers (no torch, ATen or pybind headers), compiled by one call of the
system's C++ compiler into a shared library that ``cnnlab.native.library`` opens with ctypes. The library lives
in ``<cnnlab home>/native/<name>/<name>.so`` where the name is a hash of the sources, the compiler and its
flags, the system and the CPU's name and features: not of the checkout's path, nor of torch or Python (the
library uses neither), so every checkout and virtual env on a machine shares one build, and a home folder
shared by different CPUs never loads code made for another one. Around a build:

- ``<name>.lock`` is held with ``flock`` while one process builds; others wait for it. The kernel releases it
  when the process dies, so a build killed half-way never blocks a later command. The compiler writes to
  ``<name>.<pid>.partial`` and the finished file is renamed into place, so a killed build leaves at most a
  partial file: it is removed, with a line saying so, and the build starts again.
- ``<name>/built`` marks a finished build (with its seconds).
- ``<name>.failed.json`` records a build that failed: later processes use torch's ops at once instead of
  trying again; ``python -m cnnlab.native`` (which set-up runs) deletes the record and tries again.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import platform
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Iterator

HERE = Path(__file__).parent
SOURCES = [HERE / name for name in ("maxpool2x2.cpp", "conv_pool.cpp", "winograd_pool.cpp",
                                         "block_transform.cpp", "optimizer_step.cpp")]
HEADERS = [HERE / "kernels.h", HERE / "simd.h"]
PARTIAL = ".partial"  # what a compiler writes before the finished file is renamed into place
BUILT = "built"
COMPILERS = ("c++", "g++", "clang++")

Say = Callable[[str], None]
Compile = Callable[[str, Path], Any]  # (name, folder) -> the opened library


def compile_flags(system: str | None = None, machine: str | None = None,
                  env: dict[str, str] | None = None) -> tuple[list[str], list[str]]:
    """Return (compiler flags, linker flags) for this machine, or for the ``system``/``machine`` given.

    Code for this very CPU (``-march=native`` on x86, ``-mcpu=native`` on Linux ARM; Apple's clang picks its
    own CPU). ``-fopenmp`` makes the kernels' ``omp parallel`` loops parallel; Apple's clang has no
    ``-fopenmp``, so there the kernels build without it and run on one thread.
    """
    system = system or platform.system()
    machine = (machine or platform.machine()).lower()
    env = os.environ if env is None else env
    x86 = machine in ("x86_64", "amd64", "i386", "i686")
    cflags = ["-O3"]
    if x86:
        cflags.append("-march=native")
        if env.get("ATEN_CPU_CAPABILITY") == "avx2":  # torch told to use AVX2 code only: so are the kernels
            cflags.append("-mno-avx512f")
    elif machine in ("aarch64", "arm64") and system != "Darwin":
        cflags.append("-mcpu=native")
    ldflags: list[str] = []
    if system != "Darwin":
        cflags.append("-fopenmp")
        ldflags.append("-fopenmp")
    return cflags, ldflags


def compiler(env: dict[str, str] | None = None) -> str:
    """The C++ compiler: ``$CXX``, else the first of c++, g++, clang++ on the PATH; RuntimeError if none."""
    env = os.environ if env is None else env
    if env.get("CXX"):
        found = shutil.which(env["CXX"], path=env.get("PATH"))
        if not found:
            raise RuntimeError(f"no C++ compiler: CXX={env['CXX']} is not a program on the PATH")
        return found
    found = next((path for name in COMPILERS if (path := shutil.which(name, path=env.get("PATH")))), None)
    if not found:
        raise RuntimeError("no C++ compiler (none of c++, g++, clang++ on the PATH, and CXX unset)")
    return found


def compile_command(output: Path, cxx: str) -> list[str]:
    """The one compiler call that builds the kernels into the shared library ``output``."""
    cflags, ldflags = compile_flags()
    return [cxx, *cflags, "-std=c++17", "-shared", "-fPIC", *(str(s) for s in SOURCES), "-o", str(output), *ldflags]


def build_name() -> str:
    """The library's name: a hash of the sources, the compiler and its flags, the system and the CPU's name and
    features; the same in every checkout (no path, no torch or Python version: the library uses neither)."""
    from cnnlab.cpu import cpu_flags, cpu_name

    cflags, ldflags = compile_flags()
    cxx = os.environ.get("CXX", "")  # the default compiler is whichever the PATH has: part of the machine
    key = "|".join([*(f.read_text() for f in [*SOURCES, *HEADERS]), " ".join(cflags + ldflags), cxx,
                    platform.system(), platform.machine(), cpu_name(), " ".join(sorted(cpu_flags()))])
    return "cnnlab_native_" + hashlib.sha256(key.encode()).hexdigest()[:12]


class Builder:
    """Where one build of the kernels lives, and how to load it, build it or record that it failed."""

    def __init__(self, root: Path, name: str):
        self.root, self.name = root, name
        self.folder = root / name
        self.lock_path = root / f"{name}.lock"
        self.failure_path = root / f"{name}.failed.json"

    def built(self) -> Path | None:
        """The compiled library's file if a build finished, else None."""
        library = self.folder / f"{self.name}.so"
        return library if (self.folder / BUILT).exists() and library.exists() else None

    def failure(self) -> dict[str, str] | None:
        """The record of a failed build on this machine, or None."""
        try:
            return json.loads(self.failure_path.read_text())
        except (OSError, ValueError):
            return None

    def forget_failure(self) -> None:
        """Delete the record of a failed build, so the next call tries again."""
        self.failure_path.unlink(missing_ok=True)

    def load(self, say: Say, compile_module: Compile) -> tuple[Any, str]:
        """Return (the module or None, a line on how it went): import a finished build, else build it once.

        ``compile_module(name, folder)`` compiles and opens the library (``compile_kernels``); ``say`` gets the lines
        a user must see while it happens (a build starting, a wait for another process, a stale lock).
        """
        known = self._known_outcome()
        if known is not None:
            return known
        self.root.mkdir(parents=True, exist_ok=True)
        with self._exclusive(say):
            # another process may have built it (or failed to) while this one waited
            return self._known_outcome() or self._build(say, compile_module)

    def _known_outcome(self) -> tuple[Any, str] | None:
        """A finished build opened, or the recorded failure; None when neither exists yet."""
        module = self._import_built()
        if module is not None:
            return module, f"ready in {self.folder}"
        failed = self.failure()
        return None if failed is None else (None, self._failure_line(failed))

    def _build(self, say: Say, compile_module: Compile) -> tuple[Any, str]:
        for stale in sorted(self.folder.glob(f"*{PARTIAL}")):  # no other process builds (this one holds the
            stale.unlink(missing_ok=True)                      # lock): a killed build left it
            say(f"native kernels: removed the partial output ({stale}) of a build that was stopped half-way; "
                "building again")
        say("native kernels: compiling them for this CPU, once (a few seconds; later runs load them at once)")
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / BUILT).unlink(missing_ok=True)
        start = time.perf_counter()
        try:
            module = compile_module(self.name, self.folder)
        except Exception as exc:  # noqa: BLE001 - a missing or failing compiler shows up in many forms
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            line = self._failure_line(self._record_failure(f"{type(exc).__name__}: {first_line}"))
            say(f"native kernels: {line}")
            return None, line
        seconds = time.perf_counter() - start
        (self.folder / BUILT).write_text(f"{seconds:.1f} s\n")
        say(f"native kernels: built for this CPU in {seconds:.0f} s (once)")
        return module, f"built in {self.folder} ({seconds:.1f} s)"

    def _import_built(self) -> Any:
        path = self.built()
        if path is None:
            return None
        from cnnlab.native.library import Kernels

        try:
            return Kernels(path)
        except (OSError, AttributeError):  # a damaged file: build again
            (self.folder / BUILT).unlink(missing_ok=True)
            return None

    def _record_failure(self, why: str) -> dict[str, str]:
        record = {"why": why, "when": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                  "host": platform.node()}
        tmp = self.failure_path.with_name(f".{self.failure_path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(record) + "\n")
        tmp.replace(self.failure_path)  # one rename: a reader sees the whole record or none
        return record

    def _failure_line(self, record: dict[str, str]) -> str:
        return (f"could not be built ({record.get('why', 'unknown reason')}); torch's ops serve. Recorded in "
                f"{self.failure_path}, so no process tries again: run `python -m cnnlab.native` to retry")

    @contextlib.contextmanager
    def _exclusive(self, say: Say) -> Iterator[None]:
        """Hold ``<name>.lock`` (an advisory lock the kernel drops when its holder dies); wait for it if busy."""
        try:
            import fcntl
        except ImportError:  # not POSIX: no cross-process lock (each build writes its own partial file)
            yield
            return
        with open(self.lock_path, "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                say("native kernels: another cnnlab process is building them; waiting for it")
                fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def compile_kernels(name: str, folder: Path) -> Any:
    """Compile the sources into ``folder/<name>.so`` with one compiler call and open the library."""
    from cnnlab.native.library import Kernels

    output = folder / f"{name}.so"
    partial = folder / f"{name}.{os.getpid()}{PARTIAL}"
    done = subprocess.run(compile_command(partial, compiler()), capture_output=True, text=True)
    if done.returncode != 0:
        partial.unlink(missing_ok=True)
        lines = (done.stderr or done.stdout).strip().splitlines()
        errors = [line for line in lines if "error" in line] or lines or [f"exit status {done.returncode}"]
        raise RuntimeError(f"the C++ compiler failed: {errors[0]}")
    partial.replace(output)  # one rename: a reader sees the whole library or none
    return Kernels(output)
