"""The native kernels of another checkout against this one's: build time and seed-recipe training throughput.

Made to compare two versions of ``src/cnnlab/native`` side by side on one machine (such as the torch-extension
kernels before they became plain C++ called through ctypes): ``--old`` is the root of the other tree, for
example ``git archive <commit> | tar -x -C /tmp/old``. Every figure comes from a fresh child process with
``PYTHONPATH`` set to one tree's ``src``, the trees in turn, so load on a shared machine hits both alike:

- build: ``python -m cnnlab.native`` in an empty cnnlab home (wall seconds, compile and load);
- training: one timed epoch of the tree's own ``bench/bench_train.py`` engine (cnnlab's Trainer, the seed
  recipe, real MNIST, after its warm-up), img/s; this tree runs twice, with the Winograd step's matrix products
  by its own loops and by torch's ``sgemm_``.

Prints medians with their spread (min-max), the ratios, the CPU and the load average before and after.
Run: ``.venv/bin/python bench/bench_native.py --old /tmp/old [--pairs 5] [--builds 3] [--images 6400]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

NEW = Path(__file__).resolve().parents[1]
CHILD = """
import json, sys
sys.path.insert(0, {bench!r})
import torch
from cnnlab import native
import bench_train
kernels = native.prepare(echo=None)
if {gemm!r} and kernels is not None:
    kernels.use_gemm({gemm!r})
ips = bench_train.measure("engine", "seed", None, {images})
print(json.dumps({{"ips": ips, "status": native.status(), "gemm": getattr(kernels, "gemm", "aten")}}))
"""


def spread(values: list[float], digits: int = 0) -> str:
    """``median (min-max)``."""
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def env_for(tree: Path, home: Path) -> dict[str, str]:
    """The environment of a child that imports cnnlab from ``tree`` and caches in ``home``."""
    return {**os.environ, "PYTHONPATH": str(tree / "src"), "CNNLAB_HOME": str(home)}


def new_home(root: Path) -> Path:
    """An empty cnnlab home under ``root`` that sees the MNIST files of the user's home."""
    from cnnlab.files import home_dir

    home = Path(tempfile.mkdtemp(dir=root))
    (home / "mnist").symlink_to(home_dir() / "mnist")
    return home


def build_seconds(tree: Path, root: Path) -> float:
    """Wall seconds of ``python -m cnnlab.native`` from ``tree`` in an empty home."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "cnnlab.native"], env=env_for(tree, new_home(root)), check=True,
                   capture_output=True)
    return time.perf_counter() - start


def train(tree: Path, home: Path, images: int, gemm: str = "") -> dict:
    """One child's timed seed epoch from ``tree`` (kernels already built in ``home``)."""
    code = CHILD.format(bench=str(tree / "bench"), gemm=gemm, images=images)
    done = subprocess.run([sys.executable, "-c", code], env=env_for(tree, home), check=True, capture_output=True,
                          text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    """Measure and print."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old", type=Path, required=True, help="root of the other cnnlab tree")
    parser.add_argument("--pairs", type=int, default=5, help="training runs of each side, in turn")
    parser.add_argument("--builds", type=int, default=3, help="builds of each side, in turn")
    parser.add_argument("--images", type=int, default=6400, help="images per timed epoch")
    args = parser.parse_args()
    from cnnlab.speed import cpu_name

    print(f"CPU: {cpu_name()}; {os.cpu_count()} cores; load average before: {os.getloadavg()}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        builds: dict[str, list[float]] = {"old": [], "new": []}
        for _ in range(args.builds):
            for name, tree in (("old", args.old), ("new", NEW)):
                builds[name].append(build_seconds(tree, root))
        print(f"build in an empty home, wall s, {args.builds} each in turn: old {spread(builds['old'], 1)}, "
              f"new {spread(builds['new'], 1)}")
        home = new_home(root)
        for tree in (args.old, NEW):  # built once, outside the timing
            subprocess.run([sys.executable, "-m", "cnnlab.native"], env=env_for(tree, home), check=True,
                           capture_output=True)
        sides = {"old": (args.old, ""), "new loops": (NEW, "loops"), "new sgemm_": (NEW, "blas")}
        got: dict[str, list[float]] = {name: [] for name in sides}
        for _ in range(args.pairs):
            for name, (tree, gemm) in sides.items():
                result = train(tree, home, args.images, gemm)
                assert not result["status"].startswith(("could not", "switched")), result["status"]
                got[name].append(result["ips"])
    print(f"seed recipe, one epoch of {args.images} real images, img/s, {args.pairs} each in turn:")
    for name in sides:
        ratio = [n / o for n, o in zip(got[name], got["old"])]
        print(f"  {name:10s} {spread(got[name])}  = {spread(ratio, 2)}x old")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
