"""Facts about the CPU this process runs on, read without torch: its name, feature flags and usable cores."""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path


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
