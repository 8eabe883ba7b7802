"""The machine this process runs on, without torch: the CPU's name, feature flags and usable cores; glibc's
allocator setting that keeps freed memory for reuse."""

from __future__ import annotations

import ctypes
import functools
import os
import platform
from pathlib import Path

# glibc's mallopt parameters and the largest mmap threshold it accepts on 64-bit (32 MiB).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024
_TRIM_THRESHOLD = 1 << 30


@functools.lru_cache(maxsize=None)
def _cpuinfo_text() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpuinfo_field(field: str, text: str | None = None) -> str:
    """Return the first value of ``field`` in /proc/cpuinfo, or in ``text`` ("" where it is missing)."""
    for line in (_cpuinfo_text() if text is None else text).splitlines():
        if line.split(":", 1)[0].strip() == field:
            return line.split(":", 1)[1].strip()
    return ""


def cpu_flags(text: str | None = None) -> frozenset[str]:
    """Return the CPU's feature flags: Linux's ``flags`` (x86) or ``Features`` (ARM) line of /proc/cpuinfo
    (or of ``text``); on macOS what ``sysctl`` lists; empty where none of them is available."""
    line = cpuinfo_field("flags", text) or cpuinfo_field("Features", text)
    if not line and text is None and platform.system() == "Darwin":
        line = _sysctl("-n", "machdep.cpu.features", "machdep.cpu.leaf7_features") + " " + " ".join(
            key.removeprefix("hw.optional.").rstrip(":") for key, _, value in
            (row.partition(" ") for row in _sysctl("hw.optional").splitlines()) if value.strip() == "1")
    return frozenset(line.split())


def _sysctl(*keys: str) -> str:
    """The output of ``sysctl`` for ``keys`` ("" where it fails)."""
    import subprocess

    try:
        return subprocess.run(["sysctl", *keys], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def cpu_name() -> str:
    """Return the CPU's model name, for provenance records and benchmark headers."""
    return cpuinfo_field("model name") or platform.processor() or "unknown"


def usable_cores() -> int:
    """Return the number of CPU cores this process may run on (its affinity mask, e.g. under taskset)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


@functools.lru_cache(maxsize=None)
def keep_freed_memory() -> bool:
    """Tell glibc's allocator to keep freed blocks up to 32 MiB for reuse; return whether it took the setting.

    By default glibc serves large blocks (above a threshold that starts at 128 KiB and adapts slowly) with
    a fresh mmap and hands them back on free, so each training step page-faults its activation buffers in anew (about 1,400 faults per batch of
    64 for the seed model, a fifth of the step's time). With a fixed 32 MiB threshold and trimming only
    above 1 GiB, the same memory is reused from batch to batch. The training loop, ``run.load`` (the way into every
    inspection) and the numpy model's passes call it. The setting is process-wide and has no effect on results. Elsewhere than
    on glibc (macOS, musl) nothing happens.
    """
    if platform.system() != "Linux":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the interpreter itself runs on
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
