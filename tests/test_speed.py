"""Speed settings that must hold as behaviour: the allocator keeps freed memory for reuse; cores; the bench."""

import platform
import subprocess
import sys

import pytest

# Where glibc serves a 30 MiB block from: mmap (its default for large blocks, counted in mallinfo2's hblks) or
# the heap it keeps (with keep_freed_memory's fixed 32 MiB threshold). SETUP runs first in a fresh process.
_WHERE = """
import ctypes, sys
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
exec(sys.argv[1])
before = libc.mallinfo2().hblks
block = libc.malloc(30 << 20)
mapped = libc.mallinfo2().hblks - before
libc.free(block)
print("mmap" if mapped else "heap")
"""

_TRAINER = """
import torch
from cnnlab import loop
class Data:
    train_x, train_y = torch.zeros(4, 1, 28, 28), torch.zeros(4, dtype=torch.long)
    val_x, val_y = train_x, train_y
model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
{}
"""


def _where(setup: str) -> str:
    done = subprocess.run([sys.executable, "-c", _WHERE, setup], check=True, capture_output=True, text=True)
    return done.stdout.strip()


glibc_only = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc"
                                or tuple(map(int, platform.libc_ver()[1].split("."))) < (2, 33),
                                reason="glibc 2.33 or later (mallinfo2)")


@glibc_only
def test_keep_freed_memory_serves_large_blocks_from_the_heap_it_keeps():
    # Without the setting each large block is a fresh mmap, page-faulted in anew and handed back on free.
    assert _where("pass") == "mmap"
    assert _where("from cnnlab.cpu import keep_freed_memory; assert keep_freed_memory()") == "heap"


@glibc_only
def test_trainer_applies_the_allocator_setting():
    assert _where(_TRAINER.format("")) == "mmap"  # torch, cnnlab.loop and a model alone leave glibc's default
    made = "loop.Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), Data(), batch_size=2)"
    assert _where(_TRAINER.format(made)) == "heap"


@pytest.mark.skipif(not hasattr(__import__("os"), "sched_setaffinity"), reason="needs CPU affinity (Linux)")
def test_usable_cores_follows_the_affinity_mask_not_the_machine():
    # Under taskset or a container's cpuset, os.cpu_count() still counts every core of the machine.
    code = ("import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
            "from cnnlab.speed import usable_cores; print(usable_cores(), os.cpu_count())")
    done = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    usable, total = map(int, done.stdout.split())
    assert usable == 1 and total == __import__("os").cpu_count()


def _figure(lines: list[str], name: str) -> tuple[float, float, float]:
    """The ``median (min-max)`` after ``name:`` on the one line that starts with ``name``."""
    [line] = [line for line in lines if line.startswith(name)]
    median, spread = line.split(":", 1)[1].split()[:2]
    low, high = spread.strip("()x").split("-")
    return float(median), float(low), float(high)


def test_throughput_bench_prints_ratios_that_are_the_quotients_of_its_figures():
    # A smoke run of the benchmark script (tiny epochs: the figures mean nothing, the script must not rot).
    from pathlib import Path

    from cnnlab.cpu import cpu_name

    script = Path(__file__).resolve().parents[1] / "bench" / "bench_train.py"
    done = subprocess.run([sys.executable, str(script), "--images", "256", "--pairs", "1", "--precision", "fp32"],
                          check=True, capture_output=True, text=True)
    lines = done.stdout.splitlines()
    assert cpu_name() != "unknown" and lines[0].startswith(f"machine: {cpu_name()}; torch ")
    assert lines[1] == "256 images per epoch, batch 64, 1 runs each in turn, each in its own process"
    rate = {name: _figure(lines, f"{name:<12}:") for name in ("plain", "independent", "engine")}
    for name, (median, low, high) in rate.items():
        assert median == low == high > 0, name  # one run each: median, min and max are that run
    for (top, bottom), label in ((("engine", "plain"), "engine / plain"), (("plain", "independent"),
                                                                             "plain / independent")):
        ratio = _figure(lines, label)
        assert ratio[0] == ratio[1] == ratio[2]
        # the rates are printed rounded to 1 img/s, the ratio to 0.01: it must lie within those roundings
        a, b = rate[top][0], rate[bottom][0]
        assert (a - 0.5) / (b + 0.5) - 0.005 <= ratio[0] <= (a + 0.5) / (b - 0.5) + 0.005, (label, a, b, ratio)


@glibc_only
def test_loading_a_run_applies_the_allocator_setting(real_mnist, tmp_path):
    # run.load is the way into every inspection command, which runs many large forward passes.
    import cnnlab

    trained = cnnlab.train("tiny", out=tmp_path / "tiny", overrides=["train.epochs=1"], echo=None)
    assert _where("import cnnlab.run") == "mmap"
    assert _where(f"import cnnlab; cnnlab.load({str(trained.path)!r})") == "heap"
