"""Training throughput: the cnnlab engine against plain PyTorch loops, same model, batch and data.

Each measurement runs in a fresh child process of this script (the engine changes process-wide settings,
such as the allocator's, that must not leak into the baseline), in turn; the script prints the machine, the
medians with their spread (images per second) and the ratios.

The baseline is the loop a careful user writes: torch's own ``nn.Conv2d``/``nn.MaxPool2d``/``nn.Linear`` in an
``nn.Sequential``, nothing of cnnlab's, fp32, NCHW, ``torch.optim.RMSprop``, the L2 term added to the loss, one
in-memory tensor sliced by a fresh permutation per epoch. ``independent`` is a second loop written another way
(an ``nn.Module`` with ``F.max_pool2d``, a ``DataLoader`` over a ``TensorDataset``): the bench checks that the
baseline is not slower than it. Both train on the real MNIST pixels.
Run it with `make bench` or `.venv/bin/python bench/bench_train.py [--images N] [--pairs R]`.
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
from torch import nn

WARMUP_BATCHES = 8
BATCH = 64  # the seed recipe's batch


def mnist_tensors(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` MNIST training images (scaled to 0..1, (n, 1, 28, 28)) and labels, repeated if needed."""
    from cnnlab.data import load_mnist  # only to find the verified files; the loops below are torch alone

    mnist = load_mnist()
    x = torch.as_tensor(mnist.train_images).float().div_(255).unsqueeze(1)
    y = torch.as_tensor(mnist.train_labels).long()
    reps = -(-n // len(x))
    return x.repeat(reps, 1, 1, 1)[:n].contiguous(), y.repeat(reps)[:n].contiguous()


def seed_sequential() -> nn.Sequential:
    """The articles' seed model in torch's own layers."""
    return nn.Sequential(nn.Conv2d(1, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(64, 128, 3), nn.ReLU(), nn.Flatten(),
                         nn.Linear(128 * 3 * 3, 100), nn.ReLU(), nn.Linear(100, 10))


def plain_loop(x: torch.Tensor, y: torch.Tensor) -> float:
    """The baseline: one epoch over (x, y); returns img/s."""
    torch.manual_seed(0)
    model = seed_sequential()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3, momentum=0.8, alpha=0.9, eps=1e-7)
    dense = [m.weight for m in model if isinstance(m, nn.Linear)]
    start = time.perf_counter()
    perm = torch.randperm(len(x))
    for i in range(0, len(x), BATCH):
        idx = perm[i:i + BATCH]
        loss = F.cross_entropy(model(x[idx]), y[idx]) + 0.001 * sum((w ** 2).sum() for w in dense)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return len(x) / (time.perf_counter() - start)


class _IndependentNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.conv2, self.conv3 = nn.Conv2d(1, 32, 3), nn.Conv2d(32, 64, 3), nn.Conv2d(64, 128, 3)
        self.fc1, self.fc2 = nn.Linear(1152, 100), nn.Linear(100, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(F.relu(self.conv3(x)), 1)
        return self.fc2(F.relu(self.fc1(x)))


def independent_loop(x: torch.Tensor, y: torch.Tensor) -> float:
    """The same recipe written independently (a Module class, a DataLoader); returns img/s."""
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    net = _IndependentNet()
    optimizer = torch.optim.RMSprop(net.parameters(), lr=0.001, alpha=0.9, eps=1e-7, momentum=0.8)
    loader = DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=True)
    start = time.perf_counter()
    for images, labels in loader:
        optimizer.zero_grad()
        l2 = net.fc1.weight.pow(2).sum() + net.fc2.weight.pow(2).sum()
        loss = F.cross_entropy(net(images), labels) + 0.001 * l2
        loss.backward()
        optimizer.step()
    return len(x) / (time.perf_counter() - start)


class _Data:
    """In-memory training data for the Trainer, without a validation set."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.train_x, self.train_y, self.val_x, self.val_y = x, y, x[:0], y[:0]
        self.val_is_test = False


def engine(x: torch.Tensor, y: torch.Tensor, preset: str, precision: str | None) -> float:
    """One epoch of cnnlab's Trainer with the preset's settings, no callbacks, no validation set; img/s."""
    from cnnlab.config import load_config
    from cnnlab.loop import Trainer
    from cnnlab.model import build_model
    from cnnlab.optim import get_optimizer, get_regularizer, get_schedule, regularization_loss
    from cnnlab.speed import resolve_precision

    cfg = load_config(preset=preset)
    torch.manual_seed(0)
    model = build_model(cfg.model.layers)
    opt = get_optimizer(cfg.optimizer, model.parameters(), schedule=get_schedule(cfg.schedule))
    reg = get_regularizer(cfg.regularizer)
    weights = model.kernels(reg.applies_to) if reg else []
    penalty = (lambda: regularization_loss(reg, weights)) if reg else None
    trainer = Trainer(model, opt, _Data(x, y), cfg.train.batch_size, penalty=penalty,
                      label_smoothing=cfg.train.label_smoothing, channels_last=cfg.train.channels_last,
                      precision=resolve_precision(precision or cfg.train.precision), shift=cfg.train.shift)
    start = time.perf_counter()
    trainer.fit(1)
    return len(x) / (time.perf_counter() - start)


def measure(kind: str, preset: str, precision: str | None, images: int) -> float:
    """Return img/s of one timed epoch of ``kind`` after a short warm-up epoch, in this process."""
    from cnnlab.speed import usable_cores

    torch.set_num_threads(usable_cores())
    x, y = mnist_tensors(images)
    warm = BATCH * WARMUP_BATCHES
    if kind == "engine":
        engine(x[:warm], y[:warm], preset, precision)
        return engine(x, y, preset, precision)
    loop = plain_loop if kind == "plain" else independent_loop
    loop(x[:warm], y[:warm])
    return loop(x, y)


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


def alternate(runs: dict[str, tuple[str, str, str | None]], pairs: int, images: int,
              avx2: bool = False) -> dict[str, list[float]]:
    """Measure each named (kind, preset, precision) ``pairs`` times, in turn; return every figure by name."""
    results: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(pairs):
        for name, (kind, preset, precision) in runs.items():
            results[name].append(measure_in_child(kind, preset, precision, images, avx2))
    return results


def spread(values: list[float], digits: int = 0) -> str:
    """``median (min-max)`` of the values."""
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def machine() -> str:
    """Return the CPU name, the ISA level torch uses, threads and versions."""
    from cnnlab import native
    from cnnlab.cpu import cpu_name, usable_cores

    kernels = "on" if native.prepare(echo=None) is not None else "off"
    return (f"{cpu_name()}; torch {torch.__version__} ({torch.backends.cpu.get_cpu_capability()}); "
            f"{usable_cores()} threads; {os.cpu_count()} cores; native kernels {kernels}")


def main() -> None:
    """Run the loops alternately and print medians, spreads and ratios."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=12_800, help="images per timed epoch")
    parser.add_argument("--pairs", type=int, default=5, help="runs of each loop, in turn")
    parser.add_argument("--preset", default="seed", help="the engine's preset (the baselines are the seed model)")
    parser.add_argument("--precision", choices=["fp32", "bf16", "auto"], help="override the preset's precision")
    parser.add_argument("--avx2", action="store_true",
                        help="all loops use AVX2 code only (torch, oneDNN, MKL, native kernels): an approximation of "
                             "a CPU without AVX-512; implies fp32")
    parser.add_argument("--child", choices=["plain", "independent", "engine"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps({"images_per_second": measure(args.child, args.preset, args.precision, args.images)}))
        return
    precision = "fp32" if args.avx2 else args.precision
    got = alternate({"plain": ("plain", "seed", None), "independent": ("independent", "seed", None),
                     "engine": ("engine", args.preset, precision)}, args.pairs, args.images, args.avx2)
    print(f"machine: {machine()}" + ("; restricted to AVX2 code" if args.avx2 else ""))
    print(f"{args.images} images per epoch, batch {BATCH}, {args.pairs} runs each in turn, each in its own process")
    for name in got:
        print(f"{name:<12}: {spread(got[name])} img/s")
    print(f"engine / plain      : {spread([e / p for e, p in zip(got['engine'], got['plain'])], 2)}x")
    print(f"plain / independent : {spread([p / i for p, i in zip(got['plain'], got['independent'])], 2)}x")


if __name__ == "__main__":
    main()
