"""The speed report: every figure of the speed issue, measured in one run on this machine.

1. Training throughput of the seed recipe: a plain PyTorch loop (the baseline) against cnnlab's engine in fp32
   and with the precision ``auto`` picks, each run in its own process, in turn; medians and ratios. Then the
   same pair with torch, oneDNN and MKL restricted to AVX2 code, an approximation of a CPU without AVX-512.
2. Time to accuracy: wall time of ``cnnlab train --preset fast`` (start-up and data loading included) in fp32
   and, where the CPU has it, bf16, against the time the baseline needs for two epochs, and the test accuracy
   reached; the stretch run (``--epochs 4``) against three baseline epochs.
3. Peak resident memory of ``cnnlab train --preset seed`` (one epoch, as a child process).
4. Evaluation of the 10,000 test images against one training epoch of the seed recipe.

Run: ``make bench`` or ``.venv/bin/python bench/bench.py [--repeats R] [--fast-runs K]``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_train import alternate, child_env, machine  # noqa: E402

from cnnlab.config import load_config  # noqa: E402
from cnnlab.speed import has_native_bf16, resolve_precision, usable_cores  # noqa: E402

CNNLAB = [sys.executable, "-m", "cnnlab"]


def throughput(repeats: int, images: int) -> tuple[float, dict[str, float]]:
    """Return the baseline's img/s and the engine's img/s per precision (medians; each run in its own
    process, in turn)."""
    runs = {"plain": ("plain", "seed", None), "fp32": ("engine", "seed", "fp32")}
    if has_native_bf16():
        runs["bf16"] = ("engine", "seed", "bf16")
    medians = alternate(runs, repeats, images)
    return medians.pop("plain"), medians


def fast_runs(k: int, precision: str, epochs: int | None = None, avx2: bool = False) -> list[dict[str, float]]:
    """Run ``cnnlab train --preset fast`` as a user would (seeds 0..k-1) and return wall seconds and test
    accuracy per run; ``avx2`` restricts torch, oneDNN and MKL to AVX2 code."""
    out = []
    for seed in range(k):
        with tempfile.TemporaryDirectory() as tmp:
            run_dir = Path(tmp) / "fast"
            cmd = [*CNNLAB, "train", "--preset", "fast", "--set", f"train.seed={seed}", "--set",
                   f"train.precision={precision}", "--out", str(run_dir), "--no-progress"]
            if epochs:
                cmd += ["--epochs", str(epochs)]
            start = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True, env=child_env(avx2))
            wall = time.perf_counter() - start
            history = json.loads((run_dir / "history.json").read_text())
        out.append({"seed": seed, "wall": wall, "accuracy": history[-1]["val_accuracy"]})
    return out


def print_runs(title: str, runs: list[dict[str, float]], budget: float, budget_name: str) -> None:
    """Print each run, the median wall time against the budget, and the mean and worst accuracy."""
    wall = statistics.median(r["wall"] for r in runs)
    accuracy = [r["accuracy"] for r in runs]
    print(f"   {title}")
    print("     " + ", ".join(f"seed {r['seed']}: {r['wall']:.1f} s {100 * r['accuracy']:.2f}%" for r in runs))
    print(f"     median {wall:.1f} s = {wall / budget:.2f} of {budget_name} ({budget:.1f} s); test accuracy mean "
          f"{100 * statistics.mean(accuracy):.2f}%, worst {100 * min(accuracy):.2f}%")


def peak_rss_seed_epoch() -> float:
    """Return the peak resident memory (GB) of one seed epoch run as a child process.

    ``os.wait4`` gives that child's own figure: ``RUSAGE_CHILDREN`` would report the largest of every child
    this script has waited for (a compiler building the native kernels, say).
    """
    with tempfile.TemporaryDirectory() as tmp:
        child = subprocess.Popen([*CNNLAB, "train", "--preset", "seed", "--epochs", "1", "--out",
                                  str(Path(tmp) / "seed"), "--no-progress"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise RuntimeError(f"the seed epoch failed with exit code {child.returncode}")
    return usage.ru_maxrss / 1024 / 1024  # KiB on Linux


def evaluation_seconds(repeats: int) -> float:
    """Return the median time to evaluate the 10,000 test images with the seed model (fp32)."""
    from cnnlab.metrics import evaluate
    from cnnlab.model import build_model

    model = build_model(load_config(preset="seed").model.layers).to(memory_format=torch.channels_last)
    x, y = torch.randn(10_000, 1, 28, 28), torch.randint(0, 10, (10_000,))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        evaluate(model, x, y, memory_format=torch.channels_last)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    """Measure and print the report."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--images", type=int, default=12_800, help="images per timed throughput epoch")
    parser.add_argument("--fast-runs", type=int, default=5,
                        help="runs of the fast preset per precision (seeds 0, 1, 2, ...)")
    args = parser.parse_args()
    torch.set_num_threads(usable_cores())
    # The native kernels' AVX2-only build (its own cache entry) is made now, so no timed run pays for it.
    subprocess.run([sys.executable, "-m", "cnnlab.native"], check=True, capture_output=True, env=child_env(True))
    print(f"machine: {machine()}; native bf16: {has_native_bf16()} (precision auto -> {resolve_precision('auto')})")

    base, ours = throughput(args.repeats, args.images)
    print(f"\n1. seed recipe throughput (batch 64, median of {args.repeats}, {args.images} images each)")
    print(f"   baseline plain PyTorch loop : {base:7.0f} img/s  ({60_000 / base:5.1f} s per epoch)")
    for p, v in ours.items():
        print(f"   cnnlab engine, {p:<4}         : {v:7.0f} img/s  ({60_000 / v:5.1f} s per epoch)  "
              f"ratio {v / base:.2f}x")

    avx2 = alternate({"plain": ("plain", "seed", None), "fp32": ("engine", "seed", "fp32")}, args.repeats,
                     args.images, avx2=True)
    print(f"   restricted to AVX2 code: baseline {avx2['plain']:7.0f} img/s, engine fp32 {avx2['fp32']:7.0f} img/s, "
          f"ratio {avx2['fp32'] / avx2['plain']:.2f}x")

    epoch = 60_000 / base
    precisions = ["fp32"] + (["bf16"] if has_native_bf16() else [])
    epochs = load_config(preset="fast").train.epochs
    print(f"\n2. time to accuracy: cnnlab train --preset fast ({epochs} epochs), {args.fast_runs} runs each, wall "
          "time incl. start-up and data loading")
    for p in precisions:
        print_runs(f"precision {p}:", fast_runs(args.fast_runs, p), 2 * epoch, "the baseline's 2 epochs")
    print_runs("restricted to AVX2 code, fp32, one run:", fast_runs(1, "fp32", avx2=True),
               2 * 60_000 / avx2["plain"], "the AVX2 baseline's 2 epochs")
    best = resolve_precision("auto")
    print_runs(f"stretch, --epochs 4, precision {best}:", fast_runs(args.fast_runs, best, epochs=4), 3 * epoch,
               "the baseline's 3 epochs")

    rss = peak_rss_seed_epoch()
    print(f"\n3. peak RSS of cnnlab train --preset seed (1 epoch): {rss:.2f} GB")

    ev = evaluation_seconds(args.repeats)
    epoch = 60_000 / ours["fp32"]
    print(f"\n4. evaluation of 10,000 test images: {ev:.2f} s = {ev / epoch:.3f} of one fp32 training epoch "
          f"({epoch:.1f} s)")


if __name__ == "__main__":
    main()
