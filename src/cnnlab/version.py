"""Which cnnlab this is: the package version and, when run from a git checkout, the commit."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

from cnnlab import __version__


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """Return the commit of the git checkout cnnlab runs from (``abc1234``, ``+dirty`` with local changes).

    None when cnnlab is installed from a wheel or git is not there: the package folder must sit in the
    checkout's ``src/cnnlab``, so an unrelated repository around a virtual environment is never named.
    """
    package = Path(__file__).resolve().parent
    if not (package.parent.name == "src" and (package.parent.parent / "pyproject.toml").is_file()):
        return None
    try:
        head = _git(package, "rev-parse", "--short=12", "HEAD")
        dirty = _git(package, "status", "--porcelain", "--untracked-files=no", "--", ".")
    except (OSError, subprocess.SubprocessError):
        return None
    if not head:
        return None
    return head + ("+dirty" if dirty else "")


def version_line() -> str:
    """Return ``cnnlab 0.1.0`` or, from a checkout, ``cnnlab 0.1.0 (git abc1234def56)``."""
    commit = git_commit()
    return f"cnnlab {__version__}" + (f" (git {commit})" if commit else "")


def _git(where: Path, *args: str) -> str:
    proc = subprocess.run(["git", "-C", str(where), *args], capture_output=True, text=True, timeout=5, check=False)
    if proc.returncode != 0:
        raise subprocess.SubprocessError(proc.stderr.strip())
    return proc.stdout.strip()
