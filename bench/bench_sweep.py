"""A sweep's overhead per trial on the tiny preset: what a trial costs besides its training epochs.

Runs ``cnnlab sweep`` (a child process, default journal storage) on a tiny sweep of T trials and, side by side,
``cnnlab train --preset tiny`` once (the same data and model, one plain run). From the sweep's own records:

- wall time of the whole command (process start, imports, data loading per trial, Optuna storage round trips,
  the summary with its PNGs),
- per trial: its wall time (``trial.json``: from the start of training to its last file) and the seconds spent
  inside its epochs (its history),
- overhead per trial = (command wall time - all epochs' seconds) / T.

Run: ``.venv/bin/python bench/bench_sweep.py [--trials T] [--jobs J]`` (the issue's figure: 2 cores, --jobs 1).
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

CNNLAB = [sys.executable, "-m", "cnnlab"]
SWEEP = """extends = "tiny"

[train]
epochs = 2

[sweep]
metric = "val_accuracy"
trials = {trials}
pruner = "none"
seed = 0

[sweep.space]
"optimizer.momentum" = {{ low = 0.0, high = 0.9 }}
"schedule.initial" = {{ low = 1e-4, high = 1e-2, log = true }}
"""


def timed(cmd: list[str], cwd: Path) -> float:
    """Run a command; return its wall time in seconds (it must succeed)."""
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    """Print the sweep's overhead per trial and a plain tiny run's wall time beside it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20, help="trials (default 20, as examples/sweep_seed.toml)")
    parser.add_argument("--jobs", type=int, default=1)
    args = parser.parse_args()
    from cnnlab import store
    from cnnlab.cpu import cpu_name, usable_cores

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "bench.toml").write_text(SWEEP.format(trials=args.trials))
        plain = timed([*CNNLAB, "train", "--preset", "tiny", "--out", "plain", "--no-progress"], root)
        wall = timed([*CNNLAB, "sweep", "bench.toml", "--out", "sw", "--jobs", str(args.jobs)], root)
        trials = sorted((root / "sw").glob("trial-*"))
        records = [json.loads((t / "trial.json").read_text()) for t in trials]
        epochs = [sum(h["seconds"] for h in store.read_history(t)) for t in trials]
        plain_epochs = sum(h["seconds"] for h in store.read_history(root / "plain"))
    n = len(trials)
    overhead = (wall * args.jobs - sum(epochs)) / n  # jobs run at once: their wall time counts once per job
    print(f"CPU: {cpu_name()}, {usable_cores()} usable cores, load average {os.getloadavg()[0]:.1f} at the end")
    print(f"sweep of {n} trials (tiny preset, 2 epochs each), --jobs {args.jobs}: {wall:.1f} s wall")
    print(f"  trial wall time (trial.json): median {statistics.median(r['seconds'] for r in records):.2f} s; "
          f"inside epochs: median {statistics.median(epochs):.2f} s")
    print(f"  overhead per trial (wall x jobs - epochs) / trials: {overhead:.2f} s")
    print(f"plain `cnnlab train --preset tiny` side by side: {plain:.1f} s wall, {plain_epochs:.2f} s inside epochs, "
          f"so {plain - plain_epochs:.2f} s of process start, imports and data loading for one run")


if __name__ == "__main__":
    main()
