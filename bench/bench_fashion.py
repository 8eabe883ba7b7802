"""Data-set figures: a preset trained over several seeds, test accuracy and wall time against the plain loop.

For each seed, in turn: one timed epoch of the baseline (the plain PyTorch loop of the seed recipe, in a
fresh process, on ``--images`` images, scaled to 60,000), then ``cnnlab train --preset P`` as a user runs it
(start-up and data loading included). Each run's wall time is divided by the time of three baseline epochs
measured just before it, so a machine shared with other work slows both sides of each ratio alike.

Run: ``.venv/bin/python bench/bench_fashion.py [--preset fashion] [--seeds 5]`` (``--preset fast`` for MNIST).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_train import machine, measure_in_child  # noqa: E402

BASELINE_EPOCHS = 3  # the budget: the time of three plain-loop seed epochs


def one_run(preset: str, seed: int) -> dict[str, float]:
    """Train ``preset`` with ``seed`` as the CLI does; return wall seconds and test accuracy."""
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / preset
        cmd = [sys.executable, "-m", "cnnlab", "train", "--preset", preset, "--set", f"train.seed={seed}",
               "--out", str(run_dir), "--no-progress"]
        start = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        wall = time.perf_counter() - start
        history = json.loads((run_dir / "history.json").read_text())
        config = (run_dir / "config.toml").read_text()
    if "validation = 0\n" not in config:
        raise SystemExit(f"{preset}: validation is not on the test set; this bench reports test accuracy")
    return {"wall": wall, "accuracy": history[-1]["val_accuracy"], "epochs": len(history)}


def main() -> None:
    """Measure and print one line per seed and the summary."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="fashion")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--images", type=int, default=12_800, help="images of each timed baseline epoch")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    print(f"preset {args.preset}, seeds 0..{args.seeds - 1}; budget: {BASELINE_EPOCHS} baseline epochs (plain loop, "
          "seed model, batch 64, fp32), measured before each run")
    ratios, accuracies = [], []
    for seed in range(args.seeds):
        epoch = 60_000 / measure_in_child("plain", "seed", None, args.images)
        run = one_run(args.preset, seed)
        ratio = run["wall"] / (BASELINE_EPOCHS * epoch)
        ratios.append(ratio)
        accuracies.append(run["accuracy"])
        print(f"  seed {seed}: test accuracy {100 * run['accuracy']:.2f}% after {run['epochs']} epochs, "
              f"{run['wall']:.1f} s = {ratio:.2f} of {BASELINE_EPOCHS} baseline epochs ({BASELINE_EPOCHS * epoch:.1f} s)",
              flush=True)
    print(f"test accuracy mean {100 * statistics.mean(accuracies):.2f}%, worst {100 * min(accuracies):.2f}%, "
          f"best {100 * max(accuracies):.2f}%; wall time median {statistics.median(ratios):.2f}, "
          f"worst {max(ratios):.2f} of {BASELINE_EPOCHS} baseline epochs")


if __name__ == "__main__":
    main()
