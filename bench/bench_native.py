"""The native kernels of another checkout against this one's: build time and seed-recipe training throughput.

Made to compare two versions of ``src/cnnlab/native`` side by side on one machine (such as the torch-extension
kernels before they became plain C++ called through ctypes): ``--old`` is the root of the other tree, for
example ``git archive <commit> | tar -x -C /tmp/old``.

- build: ``python -m cnnlab.native`` in an empty cnnlab home (wall seconds, compile and load), each tree's in a
  fresh child process with ``PYTHONPATH`` set to its ``src``, in turn;
- training: this process trains the seed model (cnnlab's layers, channels-last, RMSprop, batch 64, real MNIST)
  in short blocks of batches, each block with one set of kernels, the sets in turn: the other tree's build
  (its module has the same functions), this tree's with the Winograd step's matrix products by its own loops,
  and by torch's ``sgemm_``. Blocks of a few batches, alternating, keep a shared machine's changing load from
  favouring one side; medians over the blocks, and the median of each round's ratio.

Prints medians with their spread (min-max), the ratios, the CPU and the load average before and after.
Run: ``.venv/bin/python bench/bench_native.py --old /tmp/old [--builds 2] [--rounds 30] [--batches 10]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

NEW = Path(__file__).resolve().parents[1]
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


def old_kernels(tree: Path, home: Path, path: Path | None):
    """The other tree's kernels (the module ``path``, else built in ``home`` by its ``python -m cnnlab.native``),
    imported here."""
    import importlib.util

    import torch  # noqa: F401 - an extension module needs torch's libraries loaded

    if path is None:
        subprocess.run([sys.executable, "-m", "cnnlab.native"], env=env_for(tree, home), check=True,
                       capture_output=True)
        path = next((home / "native").glob("cnnlab_native_*/cnnlab_native_*.so"))
    spec = importlib.util.spec_from_file_location(path.stem.split(".")[0], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def training_blocks(sides: dict, rounds: int, batches: int) -> dict[str, list[float]]:
    """img/s of each block of ``batches`` seed-recipe training steps, per side, the sides in turn."""
    import torch
    import torch.nn.functional as F

    from cnnlab import native
    from cnnlab.config import load_config
    from cnnlab.model import build_model
    from cnnlab.speed import usable_cores

    sys.path.insert(0, str(NEW / "bench"))
    from bench_train import BATCH, mnist_tensors

    torch.set_num_threads(usable_cores())
    torch.manual_seed(0)
    model = build_model(load_config(preset="seed").model.layers).to(memory_format=torch.channels_last)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3, momentum=0.8, alpha=0.9, eps=1e-7)
    x, y = mnist_tensors(BATCH * batches * 8)
    x = x.contiguous(memory_format=torch.channels_last)
    step = 0

    def block() -> float:
        nonlocal step
        start = time.perf_counter()
        for _ in range(batches):
            i = (step % (len(x) // BATCH)) * BATCH
            loss = F.cross_entropy(model(x[i:i + BATCH]), y[i:i + BATCH])
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
        return BATCH * batches / (time.perf_counter() - start)

    got: dict[str, list[float]] = {name: [] for name in sides}
    for r in range(rounds + 1):
        for name, (kernels, gemm) in sides.items():
            if gemm:
                kernels.use_gemm(gemm)
            native._state.update(module=kernels, why=f"bench: {name}")
            ips = block()
            if r:  # round 0 warms every side up
                got[name].append(ips)
    return got


def kernel_blocks(sides: dict, rounds: int, calls: int = 20) -> dict[str, dict[str, list[float]]]:
    """Milliseconds per forward + backward call of each fused step at the seed model's shapes (batch 64), per
    side, the sides in turn."""
    import torch

    from cnnlab import native

    torch.manual_seed(0)
    cl = torch.channels_last
    steps = {
        "Conv2D_1+pool (1->32, 28x28)": (native.first_conv_max_pool, torch.randn(64, 1, 28, 28), (32, 1, 3, 3), False),
        "Conv2D_2+pool Winograd (32->64, 13x13)": (native.winograd_conv_max_pool,
                                                   torch.randn(64, 32, 13, 13).contiguous(memory_format=cl),
                                                   (64, 32, 3, 3), True),
        "max-pool (64x32x26x26)": (lambda x, w, b: native.max_pool_2x2(x),
                                   torch.randn(64, 32, 26, 26).contiguous(memory_format=cl), None, True),
    }
    got = {step: {name: [] for name in sides} for step in steps}
    for r in range(rounds + 1):
        for name, (kernels, gemm) in sides.items():
            if gemm:
                kernels.use_gemm(gemm)
            native._state.update(module=kernels, why=f"bench: {name}")
            for step, (kernel, x, wshape, input_grad) in steps.items():
                xx = x.clone().requires_grad_(input_grad)
                w = torch.randn(wshape, requires_grad=True) if wshape else None
                b = torch.randn(wshape[0], requires_grad=True) if wshape else None
                start = time.perf_counter()
                for _ in range(calls):
                    kernel(xx, w, b).sum().backward()
                if r:
                    got[step][name].append(1000 * (time.perf_counter() - start) / calls)
    return got


def main() -> None:
    """Measure and print."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old", type=Path, required=True, help="root of the other cnnlab tree")
    parser.add_argument("--old-build", type=Path, help="the other tree's compiled module, if built already")
    parser.add_argument("--builds", type=int, default=2, help="builds of each side, in turn (0: none)")
    parser.add_argument("--rounds", type=int, default=30, help="training blocks of each side, in turn")
    parser.add_argument("--batches", type=int, default=10, help="batches of 64 per training block")
    args = parser.parse_args()
    from cnnlab.cpu import cpu_name

    print(f"CPU: {cpu_name()}; {os.cpu_count()} cores; load average before: {os.getloadavg()}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        builds: dict[str, list[float]] = {"old": [], "new": []}
        for _ in range(args.builds):
            for name, tree in (("old", args.old), ("new", NEW)):
                builds[name].append(build_seconds(tree, root))
        if args.builds:
            print(f"build in an empty home, wall s, {args.builds} each in turn: old {spread(builds['old'], 1)}, "
                  f"new {spread(builds['new'], 1)}")
        from cnnlab.native.library import Kernels

        home = new_home(root)
        subprocess.run([sys.executable, "-m", "cnnlab.native"], env=env_for(NEW, home), check=True,
                       capture_output=True)
        new = Kernels(next((home / "native").glob("cnnlab_native_*/cnnlab_native_*.so")))
        sides = {"old": (old_kernels(args.old, new_home(root), args.old_build), ""), "new loops": (new, "loops"),
                 "new sgemm_": (new, "blas")}
        steps = kernel_blocks(sides, args.rounds)
        got = training_blocks(sides, args.rounds, args.batches)
    print(f"fused steps, forward + backward, ms per call at batch 64, {args.rounds} rounds of the sides in turn:")
    for step, by_side in steps.items():
        print(f"  {step}: " + "; ".join(
            f"{name} {spread(ms, 2)}" + ("" if name == "old" else
                                        f" = {spread([n / o for n, o in zip(ms, by_side['old'])], 2)}x old's time")
            for name, ms in by_side.items()))
    print(f"seed recipe training, img/s per block of {args.batches} batches of 64, {args.rounds} rounds of the "
          f"sides in turn:")
    for name in sides:
        ratio = [n / o for n, o in zip(got[name], got["old"])]
        print(f"  {name:10s} {spread(got[name])}  = {spread(ratio, 2)}x old (median of the rounds' ratios)")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
