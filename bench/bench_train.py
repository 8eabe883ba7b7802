"""Training throughput: the cnnlab engine against a plain PyTorch loop, same model, batch and data, same process.

Prints the machine, both figures (images per second, median of repeats, run alternately) and their ratio.
Run it with `make bench` or `.venv/bin/python bench/bench_train.py [--batches N] [--repeats R]`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F

from cnnlab.config import load_config
from cnnlab.model import build_model
from cnnlab.optim import get_optimizer, get_regularizer, get_schedule, regularization_loss
from cnnlab.loop import Trainer
from cnnlab.speed import cpu_name, resolve_precision


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
    kernels = model.kernels(reg.applies_to)
    trainer = Trainer(model, opt, data, batch_size, penalty=lambda: regularization_loss(reg, kernels),
                      channels_last=cfg.train.channels_last, precision=resolve_precision(cfg.train.precision),
                      shift=cfg.train.shift)
    start = time.perf_counter()
    trainer.fit(1)
    return len(data.train_x) / (time.perf_counter() - start)


def machine() -> str:
    """Return the CPU name, the ISA level torch uses, threads and versions."""
    cpu = cpu_name()
    isa = torch.backends.cpu.get_cpu_capability()
    return f"{cpu}; torch {torch.__version__} ({isa}); {torch.get_num_threads()} threads; {os.cpu_count()} cores"


def main() -> None:
    """Run both loops alternately and print medians and the ratio."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=12_800, help="images per timed epoch")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--preset", default="seed")
    parser.add_argument("--precision", choices=["fp32", "bf16", "auto"], help="override the preset's precision")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    cfg = load_config(preset=args.preset)
    if args.precision:
        cfg.train.precision = args.precision
    data = _Data(args.images)
    batch = cfg.train.batch_size
    base, ours = [], []
    plain_loop(cfg, _Data(batch * 4), batch)  # warm-up both paths
    engine(cfg, _Data(batch * 4), batch)
    for _ in range(args.repeats):
        base.append(plain_loop(cfg, data, batch))
        ours.append(engine(cfg, data, batch))
    b, o = statistics.median(base), statistics.median(ours)
    print(f"machine: {machine()}")
    print(f"preset {args.preset}, batch {batch}, {args.images} images per epoch, median of {args.repeats}")
    print(f"plain PyTorch loop : {b:8.0f} img/s  ({60000 / b:5.1f} s per 60k epoch)")
    precision = resolve_precision(cfg.train.precision)
    print(f"cnnlab engine {precision:<5}: {o:8.0f} img/s  ({60000 / o:5.1f} s per 60k epoch)  "
          f"(train.precision = {cfg.train.precision!r})")
    print(f"ratio engine/plain : {o / b:.2f}x")


if __name__ == "__main__":
    main()
