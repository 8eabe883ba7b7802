"""Build and load the native kernels: once per machine and CPU, under a lock that dies with its process.

The compiled module lives in ``<cnnlab home>/native/<name>/`` where the name changes with the sources, the
flags, torch, Python and the CPU's features (so a home folder shared by different CPUs never loads code made
for another one). Around a build:

- ``<name>.lock`` is held with ``flock`` while one process builds; others wait for it. The kernel releases it
  when the process dies, so a build killed half-way never blocks a later command. torch's own build lock
  (``<name>/lock``), which stays behind when a build is killed, is then stale by construction: it is removed,
  with a line saying so, and the build starts again.
- ``<name>/built`` marks a finished build: later processes import the module directly (milliseconds), without
  torch's extension loader.
- ``<name>.failed.json`` records a build that failed: later processes use torch's ops at once instead of
  trying again; ``python -m cnnlab.native`` (which set-up runs) deletes the record and tries again.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import importlib.util
import json
import os
import platform
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Callable, Iterator

HERE = Path(__file__).parent
SOURCES = [HERE / name for name in ("bindings.cpp", "maxpool2x2.cpp", "conv_pool.cpp", "winograd_pool.cpp")]
HEADERS = [HERE / "simd.h"]
TORCH_LOCK = "lock"  # the file torch.utils.cpp_extension's FileBaton holds in the build folder
BUILT = "built"

Say = Callable[[str], None]


def compile_flags(system: str | None = None, machine: str | None = None,
                  env: dict[str, str] | None = None) -> tuple[list[str], list[str]]:
    """Return (compiler flags, linker flags) for this machine, or for the ``system``/``machine`` given.

    Code for this very CPU (``-march=native`` on x86, ``-mcpu=native`` on Linux ARM; Apple's clang picks its
    own CPU). ``-fopenmp`` makes at::parallel_for parallel and resolves to the OpenMP runtime torch has loaded;
    Apple's clang has no ``-fopenmp``, so there the kernels build without it and run on one thread.
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


def build_name() -> str:
    """The module's name: a hash of the sources, the flags, torch, Python, the machine and the CPU's features."""
    import torch

    from cnnlab.speed import cpu_flags, cpu_name

    cflags, ldflags = compile_flags()
    key = "|".join([*(f.read_text() for f in [*SOURCES, *HEADERS]), " ".join(cflags + ldflags),
                    torch.__version__, sys.version, platform.system(), platform.machine(), cpu_name(),
                    " ".join(sorted(cpu_flags()))])
    return "cnnlab_native_" + hashlib.sha256(key.encode()).hexdigest()[:12]


class Builder:
    """Where one build of the kernels lives, and how to load it, build it or record that it failed."""

    def __init__(self, root: Path, name: str):
        self.root, self.name = root, name
        self.folder = root / name
        self.lock_path = root / f"{name}.lock"
        self.failure_path = root / f"{name}.failed.json"

    def built(self) -> Path | None:
        """The compiled module's file if a build finished, else None."""
        files = sorted(self.folder.glob(f"{self.name}*.so")) + sorted(self.folder.glob(f"{self.name}*.pyd"))
        return files[0] if (self.folder / BUILT).exists() and files else None

    def failure(self) -> dict[str, str] | None:
        """The record of a failed build on this machine, or None."""
        try:
            return json.loads(self.failure_path.read_text())
        except (OSError, ValueError):
            return None

    def forget_failure(self) -> None:
        """Delete the record of a failed build, so the next call tries again."""
        self.failure_path.unlink(missing_ok=True)

    def load(self, say: Say, compile_module: Callable[[str, Path], ModuleType]) -> tuple[ModuleType | None, str]:
        """Return (the module or None, a line on how it went): import a finished build, else build it once.

        ``compile_module(name, folder)`` does the compiling (torch's extension loader); ``say`` gets the lines
        a user must see while it happens (a build starting, a wait for another process, a stale lock).
        """
        module = self._import_built()
        if module is not None:
            return module, f"ready in {self.folder}"
        failed = self.failure()
        if failed is not None:
            return None, self._failure_line(failed)
        self.root.mkdir(parents=True, exist_ok=True)
        with self._exclusive(say):
            module = self._import_built()  # another process may have built it while this one waited
            if module is not None:
                return module, f"ready in {self.folder}"
            failed = self.failure()
            if failed is not None:
                return None, self._failure_line(failed)
            return self._build(say, compile_module)

    def _build(self, say: Say, compile_module: Callable[[str, Path], ModuleType]) -> tuple[ModuleType | None, str]:
        stale = self.folder / TORCH_LOCK
        if stale.exists():  # no other process builds (this one holds the lock): a killed build left it
            stale.unlink(missing_ok=True)
            say(f"native kernels: removed a stale build lock ({stale}) left by a build that was stopped "
                "half-way; building again")
        say("native kernels: compiling them for this CPU, once (about a minute; later runs load them at once)")
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / BUILT).unlink(missing_ok=True)
        start = time.perf_counter()
        try:
            module = compile_module(self.name, self.folder)
        except Exception as exc:  # noqa: BLE001 - a missing compiler or ninja shows up in many forms
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            line = self._failure_line(self._record_failure(f"{type(exc).__name__}: {first_line}"))
            say(f"native kernels: {line}")
            return None, line
        seconds = time.perf_counter() - start
        (self.folder / BUILT).write_text(f"{seconds:.1f} s\n")
        say(f"native kernels: built for this CPU in {seconds:.0f} s (once)")
        return module, f"built in {self.folder} ({seconds:.1f} s)"

    def _import_built(self) -> ModuleType | None:
        path = self.built()
        if path is None:
            return None
        if self.name in sys.modules:
            return sys.modules[self.name]
        spec = importlib.util.spec_from_file_location(self.name, path)
        if spec is None or spec.loader is None:
            return None
        import torch  # noqa: F401 - the module links against the libraries torch loads

        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except ImportError:  # a damaged file: build again
            (self.folder / BUILT).unlink(missing_ok=True)
            return None
        sys.modules[self.name] = module
        return module

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
        except ImportError:  # not POSIX: no cross-process lock, torch's own baton still serializes builds
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


def torch_compile(name: str, folder: Path) -> ModuleType:
    """Compile the sources into ``folder`` with torch's extension loader and return the module."""
    from torch.utils.cpp_extension import load

    cflags, ldflags = compile_flags()
    return load(name=name, sources=[str(s) for s in SOURCES], build_directory=str(folder), extra_cflags=cflags,
                extra_ldflags=ldflags, verbose=False)
