"""Training throughput: the cnnlab engine against a plain PyTorch loop, same model, batch and data.

Each measurement runs in a fresh child process of this script (the engine changes process-wide settings,
such as the allocator's, that must not leak into the baseline), baseline and engine alternately; the
script prints the machine, the medians (images per second) and their ratio.
Run it with `make bench` or `.venv/bin/python bench/bench_train.py [--images N] [--repeats R]`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from cnnlab import native
from cnnlab.config import load_config
from cnnlab.loop import Trainer
from cnnlab.model import build_model
from cnnlab.optim import get_optimizer, get_regularizer, get_schedule, regularization_loss
from cnnlab.speed import cpu_name, resolve_precision, usable_cores

WARMUP_BATCHES = 8


class _Data:
    """Synthetic in-memory data of MNIST's shape: throughput does not depend on pixel values."""

    def __init__(self, n: int):
        g = torch.Generator().manual_seed(0)
        self.train_x = torch.randn(n, 1, 28, 28, generator=g)
        self.train_y = torch.randint(0, 10, (n,), generator=g)
        self.val_x, self.val_y = self.train_x[:0], self.train_y[:0]
        self.val_is_test = False


def plain_loop(cfg, data, batch_size: int) -> float:
    """The baseline a careful user writes: nn.Sequential, fp32, NCHW, torch RMSprop, L2 added to the loss."""
    torch.manual_seed(0)
    layers = build_model(cfg.model.layers)
    for layer in layers.layers.values():
        if isinstance(layer.op, native.MaxPool2x2):
            layer.op = torch.nn.MaxPool2d(2)  # torch's own op, as the careful user has it
    model = torch.nn.Sequential(*[layer for layer in layers.layers.values()][:-1], layers.layers["Dense_2"].op)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3, momentum=0.8, alpha=0.9, eps=1e-7)
    dense = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
    x_all, y_all = data.train_x, data.train_y
    start = time.perf_counter()
    perm = torch.randperm(len(x_all))
    for i in range(0, len(x_all), batch_size):
        idx = perm[i:i + batch_size]
        loss = F.cross_entropy(model(x_all[idx]), y_all[idx]) + 0.001 * sum((w ** 2).sum() for w in dense)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return len(x_all) / (time.perf_counter() - start)


def engine(cfg, data, batch_size: int) -> float:
    """One epoch of cnnlab's Trainer with the config's settings, no callbacks, no validation set."""
    model = build_model(cfg.model.layers)
    opt = get_optimizer(cfg.optimizer, model.parameters(), schedule=get_schedule(cfg.schedule))
    reg = get_regularizer(cfg.regularizer)
    kernels = model.kernels(reg.applies_to) if reg else []
    penalty = (lambda: regularization_loss(reg, kernels)) if reg else None
    trainer = Trainer(model, opt, data, batch_size, penalty=penalty, label_smoothing=cfg.train.label_smoothing,
                      channels_last=cfg.train.channels_last, precision=resolve_precision(cfg.train.precision),
                      shift=cfg.train.shift)
    start = time.perf_counter()
    trainer.fit(1)
    return len(data.train_x) / (time.perf_counter() - start)


def measure(kind: str, preset: str, precision: str | None, images: int) -> float:
    """Return img/s of one timed epoch of ``kind`` (plain or engine), after a short warm-up, in this process."""
    torch.set_num_threads(usable_cores())
    cfg = load_config(preset=preset)
    if precision:
        cfg.train.precision = precision
    batch = cfg.train.batch_size
    run = plain_loop if kind == "plain" else engine
    run(cfg, _Data(batch * WARMUP_BATCHES), batch)
    return run(cfg, _Data(images), batch)


# Environment that makes torch, oneDNN and MKL use AVX2 code only (and cnnlab's native kernels, which are then
# compiled without AVX-512): an approximation, on an AVX-512 machine, of how the engine fares on CPUs without
# AVX-512 (such as AMD Zen 3).
AVX2_ONLY = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}


def child_env(avx2: bool) -> dict[str, str]:
    """Return the environment for a child process, restricted to AVX2 code when ``avx2``."""
    return {**os.environ, **(AVX2_ONLY if avx2 else {})}


def measure_in_child(kind: str, preset: str, precision: str | None, images: int, avx2: bool = False) -> float:
    """Run ``measure`` in a fresh Python process and return its img/s."""
    cmd = [sys.executable, __file__, "--child", kind, "--preset", preset, "--images", str(images)]
    if precision:
        cmd += ["--precision", precision]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True, env=child_env(avx2))
    return float(json.loads(done.stdout.strip().splitlines()[-1])["images_per_second"])


def alternate(runs: dict[str, tuple[str, str, str | None]], repeats: int, images: int,
              avx2: bool = False) -> dict[str, float]:
    """Measure each named (kind, preset, precision) ``repeats`` times, in turn, and return the medians."""
    results: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, (kind, preset, precision) in runs.items():
            results[name].append(measure_in_child(kind, preset, precision, images, avx2))
    return {name: statistics.median(values) for name, values in results.items()}


def machine() -> str:
    """Return the CPU name, the ISA level torch uses, threads and versions."""
    cpu = cpu_name()
    isa = torch.backends.cpu.get_cpu_capability()
    kernels = "on" if native.kernels() is not None else "off"
    return (f"{cpu}; torch {torch.__version__} ({isa}); {usable_cores()} threads; {os.cpu_count()} cores; "
            f"native kernels {kernels}")


def main() -> None:
    """Run both loops alternately and print medians and the ratio."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=12_800, help="images per timed epoch")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--preset", default="seed")
    parser.add_argument("--precision", choices=["fp32", "bf16", "auto"], help="override the preset's precision")
    parser.add_argument("--avx2", action="store_true",
                        help="both loops use AVX2 code only (torch, oneDNN, MKL, native kernels): an approximation of a CPU "
                             "without AVX-512; implies fp32")
    parser.add_argument("--child", choices=["plain", "engine"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        speed = measure(args.child, args.preset, args.precision, args.images)
        print(json.dumps({"images_per_second": speed}))
        return
    precision = "fp32" if args.avx2 else resolve_precision(args.precision or load_config(preset=args.preset).train.precision)
    medians = alternate({"plain": ("plain", args.preset, None), "engine": ("engine", args.preset, precision)},
                        args.repeats, args.images, args.avx2)
    b, o = medians["plain"], medians["engine"]
    batch = load_config(preset=args.preset).train.batch_size
    print(f"machine: {machine()}" + ("; restricted to AVX2 code" if args.avx2 else ""))
    print(f"preset {args.preset}, batch {batch}, {args.images} images per epoch, median of {args.repeats}, "
          "each run in its own process")
    print(f"plain PyTorch loop : {b:8.0f} img/s  ({60000 / b:5.1f} s per 60k epoch)")
    print(f"cnnlab engine {precision:<5}: {o:8.0f} img/s  ({60000 / o:5.1f} s per 60k epoch)")
    print(f"ratio engine/plain : {o / b:.2f}x")


if __name__ == "__main__":
    main()
