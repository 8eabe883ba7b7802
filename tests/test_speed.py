"""Speed settings that must hold as behaviour: the allocator keeps freed memory for reuse."""

import platform
import subprocess
import sys

import pytest

# Train a small conv net (the seed model's first layers) for 24 steps; print the page faults of the last 16.
_ROUNDS = """
import resource, sys, torch
if sys.argv[1] == "keep":
    from cnnlab.speed import keep_freed_memory
    assert keep_freed_memory()
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Conv2d(1, 32, 3), torch.nn.MaxPool2d(2), torch.nn.ReLU(),
                            torch.nn.Conv2d(32, 64, 3), torch.nn.Flatten(), torch.nn.Linear(7744, 10))
opt = torch.optim.SGD(model.parameters(), lr=0.01)
x, y = torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))
for step in range(24):
    if step == 8:
        start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    loss = torch.nn.functional.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start)
"""


def _faults(mode: str, runs: int = 3) -> int:
    # The median of a few child processes: glibc's default threshold adapts, so one run can be unusually low.
    counts = []
    for _ in range(runs):
        done = subprocess.run([sys.executable, "-c", _ROUNDS, mode], check=True, capture_output=True, text=True)
        counts.append(int(done.stdout.strip()))
    return sorted(counts)[runs // 2]


@pytest.mark.skipif(platform.system() != "Linux" or not platform.libc_ver()[0] == "glibc", reason="glibc only")
def test_keep_freed_memory_stops_page_faults_on_reused_buffers():
    # Without the setting glibc maps the large activation buffers afresh in every step (thousands of page
    # faults in 16 steps, 14,000 to 59,000 in single runs on the machine this was written on); with it the
    # memory freed in one step serves the next (0 to about 2,200: a few blocks still land on fresh pages).
    default, keep = _faults("default"), _faults("keep")
    assert default > 10_000
    assert keep * 5 < default


def test_trainer_applies_the_allocator_setting(monkeypatch):
    import torch

    from cnnlab import loop

    calls = []
    monkeypatch.setattr(loop, "keep_freed_memory", lambda: calls.append(1) or True)

    class Data:
        train_x, train_y = torch.zeros(4, 1, 28, 28), torch.zeros(4, dtype=torch.long)
        val_x, val_y = train_x, train_y

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    loop.Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), Data(), batch_size=2)
    assert calls == [1]


@pytest.mark.skipif(not hasattr(__import__("os"), "sched_setaffinity"), reason="needs CPU affinity (Linux)")
def test_usable_cores_follows_the_affinity_mask_not_the_machine():
    # Under taskset or a container's cpuset, os.cpu_count() still counts every core of the machine.
    code = ("import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
            "from cnnlab.speed import usable_cores; print(usable_cores(), os.cpu_count())")
    done = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    usable, total = map(int, done.stdout.split())
    assert usable == 1 and total >= 1


def test_throughput_bench_runs_and_prints_a_ratio():
    # A smoke run of the benchmark script (tiny epochs: the figures mean nothing, the script must not rot).
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "bench" / "bench_train.py"
    done = subprocess.run([sys.executable, str(script), "--images", "256", "--pairs", "1", "--precision", "fp32"],
                          check=True, capture_output=True, text=True)
    lines = done.stdout.splitlines()
    assert lines[0].startswith("machine: ") and "threads" in lines[0]
    for name in ("engine / plain", "plain / independent"):  # median (min-max)x
        ratio = [line for line in lines if line.startswith(name)]
        assert len(ratio) == 1 and float(ratio[0].split(":")[1].split()[0]) > 0


def test_loading_a_run_applies_the_allocator_setting(real_mnist, tmp_path, monkeypatch):
    # run.load is the way into every inspection command, which runs many large forward passes.
    import cnnlab
    from cnnlab import run

    trained = cnnlab.train("tiny", out=tmp_path / "tiny", overrides=["train.epochs=1"], echo=None)
    calls = []
    monkeypatch.setattr(run, "keep_freed_memory", lambda: calls.append(1) or True)
    loaded = cnnlab.load(trained.path)
    assert calls == [1] and loaded.path == trained.path
