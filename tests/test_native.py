"""The native 2x2 max-pool: the same values and gradients as torch's, and torch's op where it cannot serve."""

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from cnnlab import native

needs_kernels = pytest.mark.skipif(native.kernels() is None, reason=f"native kernels: {native.status()}")


def _both(x: torch.Tensor, grad: torch.Tensor | None = None):
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = F.max_pool2d(a, 2), native.max_pool_2x2(b)
    g = torch.randn_like(ya) if grad is None else grad
    ya.backward(g)
    yb.backward(g)
    return ya, yb, a.grad, b.grad


@needs_kernels
@pytest.mark.parametrize("shape", [(4, 32, 26, 26), (3, 64, 11, 11), (2, 1, 7, 6), (1, 5, 2, 3)])
def test_native_pool_matches_torch_bit_for_bit(shape):
    torch.manual_seed(0)
    x = torch.randn(shape).contiguous(memory_format=torch.channels_last)
    ya, yb, ga, gb = _both(x)
    assert yb.shape == ya.shape and yb.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(ya, yb) and torch.equal(ga, gb)


@needs_kernels
def test_ties_send_the_gradient_to_the_first_maximum_as_torch_does():
    x = torch.zeros(1, 2, 4, 4)
    x[0, 0, 0, 1] = x[0, 0, 1, 0] = 3.0  # two maxima in the top-left window: the one in row 0 wins
    x[0, 1] = 5.0  # a whole channel of ties: the top-left of each window wins
    x = x.contiguous(memory_format=torch.channels_last)
    ya, yb, ga, gb = _both(x, grad=torch.ones(1, 2, 2, 2))
    assert torch.equal(ya, yb) and torch.equal(ga, gb)
    assert gb[0, 0, 0, 1] == 1 and gb[0, 0, 1, 0] == 0
    assert gb[0, 1].sum() == 4 and torch.all(gb[0, 1, ::2, ::2] == 1)


@needs_kernels
def test_the_native_path_is_taken_for_channels_last_float32(monkeypatch):
    calls = []
    forward = native.kernels().max_pool_forward
    monkeypatch.setattr(native, "kernels", lambda: type("K", (), {
        "max_pool_forward": staticmethod(lambda x: calls.append("native") or forward(x))})())
    native.max_pool_2x2(torch.randn(2, 3, 4, 4).contiguous(memory_format=torch.channels_last))
    assert calls == ["native"]
    native.max_pool_2x2(torch.randn(2, 3, 4, 4))  # NCHW: torch's op
    native.max_pool_2x2(torch.randn(2, 3, 4, 4).contiguous(memory_format=torch.channels_last).bfloat16())
    assert calls == ["native"]


def test_other_inputs_use_torchs_pool_with_the_same_result():
    torch.manual_seed(1)
    for x in (torch.randn(2, 3, 9, 8), torch.randn(2, 3, 8, 8).contiguous(memory_format=torch.channels_last).bfloat16()):
        assert torch.equal(native.max_pool_2x2(x), F.max_pool2d(x, 2))


def test_switched_off_by_the_environment_the_status_says_so():
    env = {**os.environ, "CNNLAB_NATIVE": "0"}
    code = ("import torch; from cnnlab import native; "
            "x = torch.randn(2, 4, 6, 6).contiguous(memory_format=torch.channels_last); "
            "assert torch.equal(native.max_pool_2x2(x), torch.nn.functional.max_pool2d(x, 2)); "
            "print(native.kernels(), native.status())")
    out = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True).stdout
    assert out.strip() == "None switched off by CNNLAB_NATIVE=0"


def test_a_failed_build_falls_back_with_the_reason(monkeypatch, tmp_path):
    import torch.utils.cpp_extension as ext

    def broken(**kwargs):
        raise RuntimeError("Ninja is required to load C++ extensions")

    monkeypatch.setattr(ext, "load", broken)
    monkeypatch.setenv("CNNLAB_HOME", str(tmp_path))
    native.kernels.cache_clear()
    try:
        assert native.kernels() is None
        assert native.status() == "could not be built (RuntimeError: Ninja is required to load C++ extensions)"
        x = torch.randn(2, 4, 6, 6).contiguous(memory_format=torch.channels_last)
        assert torch.equal(native.max_pool_2x2(x), F.max_pool2d(x, 2))
    finally:
        native.kernels.cache_clear()


def test_seed_models_pools_are_the_native_module():
    from cnnlab.config import load_config
    from cnnlab.model import build_model

    model = build_model(load_config(preset="seed").model.layers)
    assert isinstance(model.layers["Max_Pool_1"].op, native.MaxPool2x2)


def test_training_tells_of_a_failed_build_in_one_line(real_mnist, tmp_path, monkeypatch):
    import cnnlab

    monkeypatch.setattr(native, "kernels", lambda: None)
    monkeypatch.setitem(native._status, "why", "could not be built (RuntimeError: no compiler)")
    lines = []
    run = cnnlab.train("tiny", out=tmp_path / "t", overrides=["train.epochs=1"], echo=lines.append)
    assert "  native kernels: could not be built (RuntimeError: no compiler)" in lines
    assert run.history[-1]["val_accuracy"] > 0.1  # torch's max-pool served
