"""``cnnlab --version`` and provenance name the git commit when cnnlab runs from a checkout."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from cnnlab import __version__
from cnnlab.cli import main
from cnnlab.version import git_commit

ROOT = Path(__file__).resolve().parent.parent


def _head() -> str:
    proc = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        pytest.skip(f"not run from a git checkout ({proc.stderr.strip()})")
    return proc.stdout.strip()


def test_version_names_the_commit_of_the_checkout(capsys):
    head = _head()
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    line = capsys.readouterr().out.strip()
    assert line in (f"cnnlab {__version__} (git {head})", f"cnnlab {__version__} (git {head}+dirty)")
    assert git_commit() in (head, f"{head}+dirty")
