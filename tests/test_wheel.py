"""The wheel: ``python -m build`` makes an sdist and a wheel that install into a fresh virtual env and run.

What this proves: the sdist holds everything the wheel needs (the wheel is built from the sdist, as pip does);
the wheel ships the presets and the native kernels' sources; installed with ``--no-deps`` into a fresh venv
that borrows this venv's third-party packages (no download), the ``cnnlab`` command of the wheel, not of the
checkout, trains the tiny preset and says its version without a git commit. The full install
with dependencies from the registry is measured by hand (see the README's "Install from a wheel").
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from cnnlab import __version__
from cnnlab.files import home_dir
from cnnlab.native import build
from conftest import cli_env

ROOT = Path(__file__).resolve().parent.parent
pytest.importorskip("build", reason="the wheel test needs the 'build' package (pip install -e '.[test]')")


def _tracked_copy(dest: Path) -> Path:
    """Copy the files git tracks (plus untracked, not ignored ones) so the build never writes into the checkout."""
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            capture_output=True, check=False)
    if listed.returncode != 0:
        pytest.skip(f"not a git checkout, nothing to copy from: {listed.stderr.decode().strip()}")
    for name in filter(None, listed.stdout.decode().split("\0")):
        source = ROOT / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kwargs)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_wheel_builds_installs_into_a_fresh_venv_and_runs(tmp_path):
    source = _tracked_copy(tmp_path / "src")
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(source)])
    wheels, sdists = sorted(dist.glob("cnnlab-*.whl")), sorted(dist.glob("cnnlab-*.tar.gz"))
    assert [w.name for w in wheels] == [f"cnnlab-{__version__}-py3-none-any.whl"] and len(sdists) == 1
    names = zipfile.ZipFile(wheels[0]).namelist()
    for shipped in ("cnnlab/presets/fast.toml", "cnnlab/presets/fashion.toml", "cnnlab/native/kernels.h",
                    "cnnlab/native/winograd_pool.cpp", "cnnlab/native/library.py",
                    "cnnlab/data/acquisition.py", *(f"cnnlab/native/{s.name}" for s in build.SOURCES)):
        assert shipped in names

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    # Borrow this venv's third-party packages: a .pth line adds the folder without running its .pth files,
    # so the checkout's editable cnnlab stays out and only the wheel's cnnlab can be imported.
    site = Path(_run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]
                     ).stdout.strip())
    (site / "borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--no-deps", "--quiet",
          "--disable-pip-version-check", str(wheels[0])])

    # A home with the MNIST files and no native build: the wheel's own sources are compiled on first use.
    home = tmp_path / "home"
    home.mkdir()
    (home / "mnist").symlink_to(home_dir() / "mnist")
    env = {k: v for k, v in cli_env().items() if k != "PYTHONPATH"} | {"CNNLAB_HOME": str(home)}
    cnnlab = str(venv / "bin" / "cnnlab")
    where = _run([str(venv / "bin" / "python"), "-c", "import cnnlab; print(cnnlab.__file__)"], env=env).stdout
    assert where.strip().startswith(str(site)), f"cnnlab came from {where.strip()}, not from the wheel"
    assert _run([cnnlab, "--version"], env=env).stdout.strip() == f"cnnlab {__version__}"
    run_dir = tmp_path / "run"
    trained = _run([cnnlab, "train", "--preset", "tiny", "--out", str(run_dir), "--no-progress"], env=env,
                   cwd=tmp_path)
    assert "epoch   2/2" in trained.stdout and (run_dir / "checkpoint.json").is_file()
    said = trained.stdout + trained.stderr
    if "could not be built" not in said:  # (a machine without a C++ compiler trains on torch's ops)
        assert "native kernels: compiling them for this CPU, once" in said and "native kernels: built" in said
        assert len(list((home / "native").glob("cnnlab_native_*/cnnlab_native_*.so"))) == 1
