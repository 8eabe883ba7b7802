"""The native 2x2 max-pool: the same values and gradients as torch's, and torch's op where it cannot serve."""

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from cnnlab import native

needs_kernels = pytest.mark.skipif(native.kernels() is None, reason=f"native kernels: {native.status()}")


@pytest.fixture(autouse=True)
def _kernels_prepared():
    """Every test here starts with the kernels prepared, as a training run or an inference pass has them."""
    native.kernels()


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
    monkeypatch.setenv("CXX", "no-such-c++")  # a machine without the compiler it is told to use
    monkeypatch.setenv("CNNLAB_HOME", str(tmp_path))
    native.forget()
    try:
        assert native.kernels() is None
        assert native.status().startswith("could not be built (RuntimeError: no C++ compiler: CXX=no-such-c++ is "
                                          "not a program on the PATH); torch's ops serve. Recorded in ")
        x = torch.randn(2, 4, 6, 6).contiguous(memory_format=torch.channels_last)
        assert torch.equal(native.max_pool_2x2(x), F.max_pool2d(x, 2))
    finally:
        native.forget()


def test_seed_models_pools_are_the_native_module():
    from cnnlab.config import load_config
    from cnnlab.model import build_model

    model = build_model(load_config(preset="seed").model.layers)
    assert isinstance(model.layers["Max_Pool_1"].op, native.MaxPool2x2)


def test_training_says_it_compiles_and_tells_of_a_failed_build(real_mnist, tmp_path, monkeypatch):
    import cnnlab
    from cnnlab.native import build

    def no_compiler(name, folder):
        raise RuntimeError("no compiler")

    monkeypatch.setattr(build, "compile_kernels", no_compiler)
    monkeypatch.setenv("CNNLAB_HOME", str(tmp_path / "home"))
    native.forget()
    try:
        lines = []
        run = cnnlab.train("tiny", out=tmp_path / "t", overrides=["train.epochs=1"], echo=lines.append)
        assert "  native kernels: compiling them for this CPU, once (a few seconds; later runs load them at " \
               "once)" in lines
        failed = [line for line in lines if "could not be built" in line]
        assert len(failed) == 1 and failed[0].startswith("  native kernels: could not be built (RuntimeError: "
                                                         "no compiler); torch's ops serve. Recorded in ")
        assert run.history[-1]["val_accuracy"] > 0.1  # torch's max-pool served
        native.forget()  # a second process: no second try, and the epoch header still tells why
        lines = []
        cnnlab.resume(run.path, 1, echo=lines.append)
        assert not any("compiling" in line for line in lines)
        assert [line for line in lines if "could not be built" in line] == failed
    finally:
        native.forget()


# ---------------------------------------------------------------------------------------------------------
# The first conv layer and its max-pool in one pass


def _against_torch(kernel, x, weight, bias, grad=None, input_grad=False):
    """(reference, native) results of max_pool2d(conv2d(x, w, b), 2): the output and the gradients of the
    input (None unless ``input_grad``), the weights and the bias (None without a bias)."""
    results = []
    for run in (lambda x, w, b: F.max_pool2d(F.conv2d(x, w, b), 2), kernel):
        xx = x.clone().contiguous(memory_format=torch.channels_last).requires_grad_(input_grad)
        w = weight.clone().requires_grad_()
        b = bias.clone().requires_grad_() if bias is not None else None
        y = run(xx, w, b)
        g = torch.randn(y.shape, generator=torch.Generator().manual_seed(5)) if grad is None else grad
        y.backward(g)
        results.append((y.detach(), xx.grad, w.grad, b.grad if b is not None else None))
    return results


def _assert_matches(results, rtol):
    """The native output is channels-last, shaped as torch's, and it and every gradient agree with torch's."""
    (ya, xa, wa, ba), (yb, xb, wb, bb) = results
    assert yb.shape == ya.shape and yb.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(yb, ya, rtol=rtol, atol=1e-5)
    if xa is not None:
        torch.testing.assert_close(xb, xa, rtol=rtol, atol=1e-5)
    # a weight gradient sums over every image and position: its rounding (either side's) scales with the
    # largest sums, not with each value (64 images of 13 x 13: values up to 174, errors up to 3e-4 in AVX2 code)
    torch.testing.assert_close(wb, wa, rtol=rtol, atol=max(1e-4, 2e-6 * wa.abs().max().item()))
    torch.testing.assert_close(bb, ba, rtol=1e-5, atol=1e-4)


@needs_kernels
@pytest.mark.parametrize("n,h,w,filters,k", [(64, 28, 28, 32, 3), (3, 9, 8, 5, 3), (2, 28, 28, 70, 5),
                                             (1, 4, 5, 40, 2), (5, 12, 12, 16, 3)])
def test_conv_pool_matches_conv_then_pool(n, h, w, filters, k):
    torch.manual_seed(0)
    x, weight, bias = torch.randn(n, 1, h, w), torch.randn(filters, 1, k, k), torch.randn(filters)
    _assert_matches(_against_torch(native.first_conv_max_pool, x, weight, bias), rtol=1e-5)
    results = _against_torch(native.first_conv_max_pool, x, weight, bias, input_grad=True)
    assert results[1][1] is not None and results[1][1].shape == x.shape  # the input gradient is checked too
    _assert_matches(results, rtol=1e-5)


@needs_kernels
def test_conv_pool_ties_and_exact_values_follow_torch():
    """Small integers make every sum exact: values and gradients agree bit for bit, ties included."""
    torch.manual_seed(3)
    x = torch.randint(-2, 3, (4, 1, 11, 10)).float()
    x[0] = 1.0  # a constant image: all four positions of every window tie, the top-left one wins
    weight, bias = torch.randint(-3, 4, (33, 1, 3, 3)).float(), torch.randint(-2, 3, (33,)).float()
    grad = torch.randint(-3, 4, (4, 33, 4, 4)).float()
    (ya, xa, wa, ba), (yb, xb, wb, bb) = _against_torch(native.first_conv_max_pool, x, weight, bias, grad,
                                                          input_grad=True)
    assert torch.equal(ya, yb) and torch.equal(xa, xb) and torch.equal(wa, wb) and torch.equal(ba, bb)
    assert xb[:, :, 10].abs().sum() == 0 and xa[:, :, 10].abs().sum() == 0  # in no pooled window (of 9 conv rows
    # the pool drops the last, the only one that reads input row 10)


@needs_kernels
def test_conv_pool_without_bias():
    torch.manual_seed(4)
    x, weight = torch.randn(2, 1, 8, 8), torch.randn(8, 1, 3, 3)
    (ya, _, wa, _), (yb, _, wb, bb) = _against_torch(native.first_conv_max_pool, x, weight, None)
    assert bb is None
    torch.testing.assert_close(yb, ya)
    torch.testing.assert_close(wb, wa)


def test_conv_pool_serves_only_a_plain_first_layer():
    x = torch.randn(2, 1, 28, 28)
    first = torch.nn.Conv2d(1, 32, 3)
    assert native.first_conv_pool_applies(x, first) == (native.kernels() is not None)
    assert native.first_conv_pool_applies(x.clone().requires_grad_(), first) == (native.kernels() is not None)
    assert native.first_conv_pool_applies(x, torch.nn.Conv2d(1, 32, 3, padding=1)) == (native.kernels() is not None)
    assert not native.first_conv_pool_applies(x, torch.nn.Conv2d(1, 32, 3, padding=1, padding_mode="reflect"))
    assert not native.first_conv_pool_applies(x, torch.nn.Conv2d(1, 32, 3, stride=2))
    assert not native.first_conv_pool_applies(torch.randn(2, 3, 28, 28), torch.nn.Conv2d(3, 32, 3))
    assert not native.first_conv_pool_applies(x.double(), first.double())


@needs_kernels
def test_the_seed_model_trains_its_conv_blocks_in_one_pass_each(monkeypatch):
    """forward() fuses Conv2D_1 + Max_Pool_1 and Conv2D_2 + Max_Pool_2, with the values and gradients of the
    unfused path."""
    from cnnlab.config import load_config
    from cnnlab.model import build_model

    torch.manual_seed(2)
    model = build_model(load_config(preset="seed").model.layers).to(memory_format=torch.channels_last)
    x = torch.randn(16, 1, 28, 28)
    calls = []
    from cnnlab.native import autograd

    for name in ("first_conv_max_pool", "winograd_conv_max_pool"):
        kernel = getattr(autograd, name)
        monkeypatch.setattr(autograd, name, lambda *a, k=kernel, n=name: calls.append(n) or k(*a))
    results = []
    for fuse in (native.conv_max_pool, lambda x, conv, relu=False: None):
        monkeypatch.setattr(native, "conv_max_pool", fuse)
        model.zero_grad()
        logits = model(x)
        logits.square().sum().backward()
        results.append((logits.detach(), [p.grad.clone() for p in model.parameters()]))
    assert calls == ["first_conv_max_pool", "winograd_conv_max_pool"]
    (fast, fast_grads), (slow, slow_grads) = results
    torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-5)
    for a, b in zip(fast_grads, slow_grads):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------
# 3x3 convolution and max-pool by Winograd F(2x2, 3x3)


@needs_kernels
@pytest.mark.parametrize("n,c,h,w,k", [(64, 32, 13, 13, 64), (3, 5, 9, 8, 7), (9, 16, 4, 4, 3), (2, 64, 12, 14, 128)])
def test_winograd_pool_matches_conv_then_pool(n, c, h, w, k):
    torch.manual_seed(0)
    x, weight, bias = torch.randn(n, c, h, w), torch.randn(k, c, 3, 3) / (3 * c ** 0.5), torch.randn(k)
    results = _against_torch(native.winograd_conv_max_pool, x, weight, bias, input_grad=True)
    assert results[1][1] is not None  # the input gradient is checked too
    _assert_matches(results, rtol=1e-4)


@needs_kernels
def test_winograd_pool_through_torchs_sgemm_gives_the_same_results(monkeypatch):
    """The Winograd step's matrix products by the library's own loops or by the sgemm_ torch exports: the same
    values and gradients (up to float rounding) as torch's conv + pool."""
    from cnnlab.native.library import blas_sgemm

    if blas_sgemm() is None:
        pytest.skip("torch's CPU library exports no sgemm_ here")
    kernels = native.kernels()
    kept = kernels.gemm
    try:
        kernels.use_gemm("blas")
        assert kernels.gemm == "blas"
        torch.manual_seed(1)
        x, weight, bias = torch.randn(6, 24, 11, 12), torch.randn(40, 24, 3, 3) / 15, torch.randn(40)
        _assert_matches(_against_torch(native.winograd_conv_max_pool, x, weight, bias, input_grad=True), rtol=1e-4)
    finally:
        kernels.use_gemm(kept)


@needs_kernels
def test_winograd_pool_ties_and_exact_values_follow_torch():
    """Small integers (and weights in halves, which the transform needs) keep every sum exact."""
    torch.manual_seed(3)
    x = torch.randint(-2, 3, (5, 6, 10, 11)).float()
    x[0] = 0.0  # an empty map: all four positions of every window tie at the bias, the top-left one wins
    weight, bias = torch.randint(-3, 4, (9, 6, 3, 3)).float() / 2, torch.randint(-2, 3, (9,)).float()
    grad = torch.randint(-3, 4, (5, 9, 4, 4)).float()
    (ya, xa, wa, ba), (yb, xb, wb, bb) = _against_torch(native.winograd_conv_max_pool, x, weight, bias, grad,
                                                          input_grad=True)
    assert torch.equal(ya, yb) and torch.equal(xa, xb) and torch.equal(wa, wb) and torch.equal(ba, bb)


@needs_kernels
def test_winograd_pool_without_bias_or_input_gradient():
    torch.manual_seed(4)
    x, weight = torch.randn(3, 4, 8, 8).contiguous(memory_format=torch.channels_last), torch.randn(5, 4, 3, 3)
    w = weight.clone().requires_grad_()
    y = native.winograd_conv_max_pool(x, w, None)
    y.sum().backward()
    w_ref = weight.clone().requires_grad_()
    F.max_pool2d(F.conv2d(x, w_ref), 2).sum().backward()
    torch.testing.assert_close(y, F.max_pool2d(F.conv2d(x, weight), 2), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(w.grad, w_ref.grad, rtol=1e-4, atol=1e-4)


@needs_kernels
def test_winograd_pool_with_frozen_filters_computes_the_input_gradient_alone(monkeypatch):
    """Filters that need no gradient get none and their products are skipped; the input and bias gradients are
    those of the full backward pass, bit for bit."""
    torch.manual_seed(5)
    x = torch.randn(4, 6, 10, 10).contiguous(memory_format=torch.channels_last)
    weight, bias = torch.randn(7, 6, 3, 3), torch.randn(7)
    asked = []
    backward = native.kernels().winograd_pool_backward
    monkeypatch.setattr(native.kernels(), "winograd_pool_backward",
                        lambda *a: asked.append(a[-1]) or backward(*a))
    results = []
    for frozen in (False, True):
        xx, w, b = x.clone().requires_grad_(), weight.clone().requires_grad_(not frozen), bias.clone().requires_grad_()
        y = native.winograd_conv_max_pool(xx, w, b, relu=True)
        y.backward(torch.randn(y.shape, generator=torch.Generator().manual_seed(2)))
        results.append((xx.grad, w.grad, b.grad))
    (xa, wa, ba), (xb, wb, bb) = results
    assert asked == [True, False]
    assert wa is not None and wb is None
    assert torch.equal(xa, xb) and torch.equal(ba, bb)


@needs_kernels
def test_conv_pool_with_frozen_filters_computes_the_input_gradient_alone(monkeypatch):
    """A first layer whose input is optimized (a filter pattern's ascent) and whose filters need no gradient:
    only the input's gradient is computed, that of the full backward pass bit for bit."""
    torch.manual_seed(5)
    x, weight, bias = torch.randn(3, 1, 12, 12), torch.randn(40, 1, 3, 3), torch.randn(40)
    asked = []
    kernels = native.kernels()
    for name in ("conv_pool_backward", "conv_pool_backward_input"):
        monkeypatch.setattr(kernels, name, lambda *a, name=name, f=getattr(kernels, name): asked.append(name)
                            or f(*a))
    results = []
    for frozen in (False, True):
        xx = x.clone().requires_grad_()
        w, b = weight.clone().requires_grad_(not frozen), bias.clone().requires_grad_(not frozen)
        y = native.first_conv_max_pool(xx, w, b, relu=True)
        y.backward(torch.randn(y.shape, generator=torch.Generator().manual_seed(2)))
        results.append((xx.grad, w.grad, b.grad))
    (xa, wa, ba), (xb, wb, bb) = results
    assert asked == ["conv_pool_backward_input", "conv_pool_backward", "conv_pool_backward_input"]
    assert wa is not None and ba is not None and wb is None and bb is None
    assert torch.equal(xa, xb)


def test_winograd_serves_only_plain_3x3_layers_outside_autocast():
    """Plain: stride 1, no dilation or groups, zero padding the same on every side (or none)."""
    x = torch.randn(2, 32, 13, 13).contiguous(memory_format=torch.channels_last)
    conv = torch.nn.Conv2d(32, 64, 3)
    assert native.winograd_pool_applies(x, conv) == (native.kernels() is not None)
    assert not native.winograd_pool_applies(x.contiguous(), conv)  # NCHW
    assert not native.winograd_pool_applies(x, torch.nn.Conv2d(32, 64, 5))
    assert native.winograd_pool_applies(x, torch.nn.Conv2d(32, 64, 3, padding=1)) == (native.kernels() is not None)
    assert not native.winograd_pool_applies(x, torch.nn.Conv2d(32, 64, 3, padding=(1, 0)))
    assert not native.winograd_pool_applies(x, torch.nn.Conv2d(32, 64, 3, padding="same"))
    assert not native.winograd_pool_applies(x, torch.nn.Conv2d(32, 64, 3, stride=2))
    assert not native.winograd_pool_applies(x[:, :, :3, :3].contiguous(memory_format=torch.channels_last), conv)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not native.winograd_pool_applies(x, conv)


@needs_kernels
@pytest.mark.parametrize("channels", [1, 8])
def test_same_padded_convs_run_padded_through_the_fused_kernels(channels):
    """A 3x3 conv with padding 1 (Keras 'same') takes the fused path on the zero-padded input, same results."""
    torch.manual_seed(6)
    conv = torch.nn.Conv2d(channels, 16, 3, padding=1)
    x = torch.randn(4, channels, 7, 7).contiguous(memory_format=torch.channels_last)
    x.requires_grad_()  # (a first layer's input needs one in a filter pattern's ascent)
    fused = native.conv_max_pool(x, conv)
    assert fused is not None and fused.shape == (4, 16, 3, 3)
    grads = []
    for y in (fused, F.max_pool2d(conv(x), 2)):
        conv.zero_grad()
        x.grad = None
        y.square().sum().backward()
        grads.append((conv.weight.grad.clone(), x.grad))
    torch.testing.assert_close(fused, F.max_pool2d(conv(x), 2), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-4, atol=1e-5)


@needs_kernels
def test_winograd_filters_are_kept_until_the_weights_change():
    conv = torch.nn.Conv2d(8, 16, 3)
    x = torch.randn(4, 8, 12, 12).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        first = native._winograd_filters(conv.weight)
        assert native._winograd_filters(conv.weight) is first  # kept across inference passes
        y = native.conv_max_pool(x, conv)
    with torch.no_grad():
        conv.weight.mul_(2.0)  # an optimizer step: a new version
    with torch.inference_mode():
        again = native._winograd_filters(conv.weight)
        assert again is not first
        torch.testing.assert_close(again, 2 * first)
        torch.testing.assert_close(native.conv_max_pool(x, conv), F.max_pool2d(conv(x), 2))
    assert not y.requires_grad
    # a training step after an inference pass on the same weights: never an inference tensor saved for backward
    out = native.conv_max_pool(x.clone().requires_grad_(), conv)
    out.sum().backward()
    assert conv.weight.grad is not None and conv.weight.grad.shape == (16, 8, 3, 3)


# ---------------------------------------------------------------------------------------------------------
# The fused optimizer steps: the bits of the optimizers' torch ops


def _parameters(seed: int) -> list[torch.nn.Parameter]:
    """Parameters as a model has them: channels-last conv weights, biases of odd sizes, one large enough for
    two threads."""
    torch.manual_seed(seed)
    shapes = [(32, 1, 3, 3), (64, 32, 3, 3), (100, 1152), (10,), (33,), (70_001,)]
    params = [torch.nn.Parameter(torch.randn(s) * 0.1) for s in shapes]
    params[1].data = params[1].data.contiguous(memory_format=torch.channels_last)
    return params


OPTIMIZERS = [
    {"name": "rmsprop", "rho": 0.9, "momentum": 0.8, "epsilon": 1e-7},
    {"name": "rmsprop", "rho": 0.95, "momentum": 0.0, "epsilon": 1e-6},
    {"name": "adam", "beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7},
    {"name": "adam", "beta_1": 0.3, "beta_2": 0.4, "epsilon": 1e-3},  # lerp weights >= 0.5: torch's other branch
    {"name": "adamw", "weight_decay": 0.05},
]


def _steps(spec: dict, fused: bool, monkeypatch, steps: int = 12) -> tuple[list[torch.Tensor], dict, int]:
    from cnnlab.optim import get_optimizer

    monkeypatch.setattr(native, "fused_steps", native.fused_steps if fused else (lambda: None))
    calls = []
    kernels = native.kernels()
    for name in ("rmsprop_step", "adam_step"):
        original = getattr(type(kernels), name)
        monkeypatch.setattr(type(kernels), name,
                            lambda self, *a, _f=original, **k: calls.append(1) or _f(self, *a, **k))
    params = _parameters(0)
    optimizer = get_optimizer({**spec, "learning_rate": 0.01}, params,
                              schedule={"name": "exponential", "initial": 0.01, "decay_steps": 3, "decay_rate": 0.5})
    torch.manual_seed(1)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn_like(p) * 0.01
        optimizer.step()
    return [p.detach().clone() for p in params], optimizer.state_dict()["state"], len(calls)


@needs_kernels
@pytest.mark.parametrize("spec", OPTIMIZERS, ids=lambda s: "-".join(f"{v}" for v in s.values()))
def test_fused_optimizer_steps_give_the_bits_of_the_torch_ops(spec, monkeypatch):
    with monkeypatch.context() as m:
        reference, reference_state, _ = _steps(spec, False, m)
    with monkeypatch.context() as m:
        got, state, calls = _steps(spec, True, m)
    assert calls == 12  # every step fused
    for a, b in zip(got, reference):
        assert torch.equal(a, b)
    for index, slots in reference_state.items():
        for name, value in slots.items():
            assert torch.equal(state[index][name], value), name


@needs_kernels
def test_a_fused_step_leaves_tensors_it_cannot_serve_to_the_torch_ops():
    kernels = native.kernels()
    p = torch.randn(4, 8, 3, 3).contiguous(memory_format=torch.channels_last)
    g, v = torch.randn(4, 8, 3, 3), torch.zeros(4, 8, 3, 3)  # laid out unlike the parameter
    before = p.clone()
    assert not kernels.rmsprop_step([p], [g], [v], None, 0.1, 0.9, 0.0, 1e-7)
    assert not kernels.adam_step([p.double()], [g.double()], [v.double()], [v.double()], 0.1, 0.9, 0.99, 1e-7)
    assert torch.equal(p, before) and not v.any()
    version = p._version
    assert kernels.rmsprop_step([p], [g.contiguous(memory_format=torch.channels_last)],
                                [v.contiguous(memory_format=torch.channels_last)], None, 0.1, 0.9, 0.0, 1e-7)
    assert not torch.equal(p, before)
    assert p._version > version  # changed behind torch's back, yet what caches per version sees it


@needs_kernels
def test_the_winograd_filters_follow_weights_a_fused_step_changed():
    from cnnlab.optim import get_optimizer

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(8, 16, 3).to(memory_format=torch.channels_last)
    x = torch.randn(2, 8, 10, 10).contiguous(memory_format=torch.channels_last)
    optimizer = get_optimizer({"name": "adam", "learning_rate": 0.1}, conv.parameters())
    with torch.no_grad():
        native.winograd_conv_max_pool(x, conv.weight, conv.bias)  # transforms the filters and keeps them
    for p in conv.parameters():
        p.grad = torch.ones_like(p)
    optimizer.step()
    with torch.no_grad():
        torch.testing.assert_close(native.winograd_conv_max_pool(x, conv.weight, conv.bias),
                                   F.max_pool2d(conv(x), 2), rtol=1e-4, atol=1e-4)


@needs_kernels
@pytest.mark.parametrize("kernel,channels", [(native.first_conv_max_pool, 1), (native.winograd_conv_max_pool, 24)])
def test_a_fused_relu_gives_the_bits_of_torch_relu_after_the_kernel(kernel, channels):
    """Values, input, weight and bias gradients all equal bit for bit those of F.relu on the kernel's output:
    outputs <= 0 (a third here, some exactly 0) get no gradient, the rest theirs."""
    torch.manual_seed(7)
    x = torch.randn(5, channels, 12, 11).contiguous(memory_format=torch.channels_last)
    x[0] = 0.0  # a blank image: each output is the bias alone, exactly 0 for the zeroed filters
    weight, bias = torch.randn(40, channels, 3, 3), torch.randn(40) - 0.5
    bias[:4] = 0.0
    results = []
    for run in (lambda *a: F.relu(kernel(*a)), lambda *a: kernel(*a, relu=True)):
        xx = x.clone().requires_grad_()  # (a first layer's input too: as in a filter pattern's ascent)
        w, b = weight.clone().requires_grad_(), bias.clone().requires_grad_()
        y = run(xx, w, b)
        y.backward(torch.randn(y.shape, generator=torch.Generator().manual_seed(1)))
        results.append([y.detach(), xx.grad, w.grad, b.grad])
    (ya, *grads_a), (yb, *grads_b) = results
    assert 0.2 < (ya == 0).float().mean() < 0.8 and (ya[0, :4] == 0).all()
    assert torch.equal(ya, yb) and yb.is_contiguous(memory_format=torch.channels_last)
    assert all(g is not None for g in grads_b)
    for a, b in zip(grads_a, grads_b):
        assert torch.equal(a, b)
