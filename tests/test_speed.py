"""Speed settings that must hold as behaviour: the allocator keeps freed memory for reuse."""

import platform
import subprocess
import sys

import pytest

# Allocate and free an 18 MB pair of tensors 8 times; print the page faults of the last 5 rounds.
_ROUNDS = """
import resource, sys, torch
if sys.argv[1] == "keep":
    from cnnlab.speed import keep_freed_memory
    assert keep_freed_memory()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for i in range(8):
    if i == 3:
        start = faults()
    a, b = torch.ones(1_500_000), torch.ones(3_000_000)
    del a, b
print(faults() - start)
"""


def _faults(mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", _ROUNDS, mode], check=True, capture_output=True, text=True)
    return int(done.stdout.strip())


@pytest.mark.skipif(platform.system() != "Linux" or not platform.libc_ver()[0] == "glibc", reason="glibc only")
def test_keep_freed_memory_stops_page_faults_on_reused_buffers():
    # Without the setting glibc maps each block afresh (about 4,400 faults a round at first); with it the
    # memory freed in round 1 serves every later round.
    assert _faults("default") > 2_000
    assert _faults("keep") < 100


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
