"""Training on a GPU against the CPU of the same machine: seed epochs, the fast preset's time and accuracy.

Run on a machine where torch sees a CUDA device (a CUDA build of torch 2.13.0 in the venv):

    .venv/bin/python bench/bench_gpu.py [--seeds 5] [--out /tmp/bench-gpu]

It prints the machine (GPU and CPU named), then for the seed recipe (2 epochs) each epoch's seconds from the
run's history (validation included) on cuda and on the CPU, side by side in this one process, and for the
``fast`` preset per seed the wall time of ``cnnlab.train`` (CUDA start-up included in the first) and the test
accuracy, with the worst and mean. Last it checks that a GPU run resumes bit for bit (1 + 1 epochs = 2) and
loads on the CPU with the GPU's test accuracy.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

import cnnlab
from cnnlab import store
from cnnlab.cpu import cpu_name, usable_cores


def timed_train(preset: str, out: Path, overrides: list[str], epochs: int | None = None) -> tuple[cnnlab.Run, float]:
    """Train ``preset`` into ``out``; return the run and the wall seconds of the call."""
    start = time.perf_counter()
    run = cnnlab.train(preset, out=out, epochs=epochs, overrides=overrides, echo=None, progress=False)
    return run, time.perf_counter() - start


def seed_epochs(root: Path) -> None:
    """The seed recipe, 2 epochs, on cuda then on the CPU: each epoch's seconds (validation included)."""
    for device in ("cuda", "cpu"):
        run, wall = timed_train("seed", root / f"seed-{device}", [f"train.device={device}"], epochs=2)
        epochs = ", ".join(f"{row['seconds']:.2f} s" for row in run.history)
        print(f"seed, 2 epochs, {device:>4}: epochs {epochs}; wall {wall:.1f} s; "
              f"test accuracy {run.history[-1]['val_accuracy']:.4f}")


def fast_seeds(root: Path, seeds: int) -> None:
    """The fast preset on cuda for seeds 0..seeds-1: wall time and test accuracy, worst and mean."""
    accuracies, walls = [], []
    for seed in range(seeds):
        run, wall = timed_train("fast", root / f"fast-{seed}", ["train.device=cuda", f"train.seed={seed}"])
        accuracy = run.evaluate()["accuracy"]
        accuracies.append(accuracy)
        walls.append(wall)
        epochs = ", ".join(f"{row['seconds']:.2f}" for row in run.history)
        print(f"fast, seed {seed}, cuda: wall {wall:.1f} s (epochs {epochs} s), test accuracy {accuracy:.4f}")
    print(f"fast on cuda over {seeds} seeds: wall median {statistics.median(walls):.1f} s "
          f"(min {min(walls):.1f}, max {max(walls):.1f}); test accuracy worst {min(accuracies):.4f}, "
          f"mean {statistics.mean(accuracies):.4f}")


def resume_check(root: Path) -> None:
    """A GPU run resumes bit for bit (1 + 1 = 2 epochs) and loads on the CPU with the same test accuracy."""
    overrides = ["train.device=cuda", "train.epochs=2"]
    two, _ = timed_train("seed", root / "two", overrides)
    one, _ = timed_train("seed", root / "one", overrides, epochs=1)
    resumed = cnnlab.resume(one.path, 1, echo=None, progress=False)
    a = load_file(str(store.checkpoint_path(two.path, store.WEIGHTS)))
    b = load_file(str(store.checkpoint_path(resumed.path, store.WEIGHTS)))
    same = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    on_cpu = cnnlab.load(two.path, device="cpu").evaluate()["accuracy"]
    print(f"resume on cuda, 1 + 1 epochs = 2: {'bit for bit' if same else 'DIFFERENT'}; test accuracy on cuda "
          f"{two.history[-1]['val_accuracy']:.4f}, the same weights loaded on the CPU {on_cpu:.4f}")


def main() -> int:
    """Parse the options and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="seeds of the fast preset (default 5)")
    parser.add_argument("--out", type=Path, help="where the runs go (default: a temporary folder)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("bench_gpu: torch sees no CUDA device here; run it on a GPU machine", file=sys.stderr)
        return 2
    print(f"machine: {torch.cuda.get_device_name(0)}; CPU {cpu_name()}, {usable_cores()} cores; "
          f"torch {torch.__version__} (CUDA {torch.version.cuda})")
    with tempfile.TemporaryDirectory() as tmp:
        root = args.out or Path(tmp)
        seed_epochs(root)
        fast_seeds(root, args.seeds)
        resume_check(root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
