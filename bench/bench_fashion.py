"""Data-set figures: a preset trained over several seeds, test accuracy and wall time against the plain loop.

The baseline is bench_train's plain loop: torch's own layers in an ``nn.Sequential``, fp32, RMSprop, batch 64,
on MNIST, one timed epoch on ``--images`` images (scaled to 60,000) in a fresh process. For each seed, in turn:
a baseline epoch, then ``cnnlab train --preset P`` as a user runs it (start-up and data loading included); one
more baseline epoch after the last seed. Each run's wall time is divided by three times the mean of the two
baseline epochs measured just before and just after it, so a machine shared with other work slows both sides
of each ratio alike; the load average is printed with each line.

Run: ``.venv/bin/python bench/bench_fashion.py [--preset fashion] [--seeds 5]`` (``--preset fast`` for MNIST).
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

sys.path.insert(0, str(Path(__file__).parent))
import cnnlab  # noqa: E402
from bench_train import machine, measure_in_child  # noqa: E402

BASELINE_EPOCHS = 3  # the budget: the time of three plain-loop seed epochs


def one_run(preset: str, seed: int, overrides: list[str]) -> dict[str, float]:
    """Train ``preset`` (with ``--set`` overrides) and ``seed`` as the CLI does; return wall seconds, test accuracy."""
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / preset
        cmd = [sys.executable, "-m", "cnnlab", "train", "--preset", preset, "--set", f"train.seed={seed}",
               "--out", str(run_dir), "--no-progress"]
        cmd += [arg for override in overrides for arg in ("--set", override)]
        start = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        wall = time.perf_counter() - start
        run = cnnlab.load(run_dir)  # the history lives in the run's checkpoint
        history = run.history
    if run.config.data.validation != 0:
        raise SystemExit(f"{preset}: validation is not on the test set; this bench reports test accuracy")
    return {"wall": wall, "accuracy": history[-1]["val_accuracy"], "epochs": len(history),
            "epoch_seconds": sum(row["seconds"] for row in history)}


def baseline_epoch(images: int) -> float:
    """Seconds of one plain-loop seed epoch on MNIST (60,000 images), measured on ``images`` in a fresh process."""
    return 60_000 / measure_in_child("plain", "seed", None, images)


def load() -> str:
    """The load averages over 1, 5 and 15 minutes."""
    return "load " + " ".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> None:
    """Measure and print one line per seed and the summary."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="fashion")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--images", type=int, default=12_800, help="images of each timed baseline epoch")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for the preset's runs (repeatable), as cnnlab train --set")
    args = parser.parse_args()
    print(f"machine: {machine()}; {load()}")
    print(f"preset {' '.join([args.preset, *args.overrides])}, seeds 0..{args.seeds - 1}; budget: {BASELINE_EPOCHS} "
          "baseline epochs (plain loop, seed model, batch 64, fp32, MNIST), measured before and after each run",
          flush=True)
    ratios, accuracies = [], []
    before = baseline_epoch(args.images)
    for seed in range(args.seeds):
        run = one_run(args.preset, seed, args.overrides)
        after = baseline_epoch(args.images)
        budget = BASELINE_EPOCHS * (before + after) / 2
        ratios.append(run["wall"] / budget)
        accuracies.append(run["accuracy"])
        print(f"  seed {seed}: test accuracy {100 * run['accuracy']:.2f}% after {run['epochs']} epochs "
              f"({run['epoch_seconds']:.1f} s in them), {run['wall']:.1f} s = {ratios[-1]:.2f} of {BASELINE_EPOCHS} "
              f"baseline epochs ({budget:.1f} s; epochs {before:.1f} s before, {after:.1f} s after); {load()}",
              flush=True)
        before = after
    print(f"test accuracy mean {100 * statistics.mean(accuracies):.2f}%, worst {100 * min(accuracies):.2f}%, "
          f"best {100 * max(accuracies):.2f}%; wall time median {statistics.median(ratios):.2f}, "
          f"worst {max(ratios):.2f} of {BASELINE_EPOCHS} baseline epochs")


if __name__ == "__main__":
    main()
