"""Winograd's F(3x3, 3x3) for torch (cnnlab.layers.winograd_conv) and its native transforms, against torch's
convolution in float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cnnlab import native
from cnnlab.config import load_config, resolve_layers
from cnnlab.layers import winograd_conv
from cnnlab.layers.winograd_conv import WinogradConv2d, applies, conv3x3
from cnnlab.model import build_model

CL = torch.channels_last


@pytest.fixture(params=["native", "torch"])
def transforms(request, monkeypatch):
    """Each test runs with the native transforms and with torch's matmul in their place."""
    if request.param == "native":
        if native.prepare(echo=None) is None:
            pytest.skip(f"native kernels unavailable: {native.status()}")
    else:
        monkeypatch.setitem(native._state, "module", None)
    return request.param


def _maps(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).contiguous(memory_format=CL)


def _relative(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double() - want).abs().max() / want.abs().max()).item()


@pytest.mark.parametrize("pad, size, bias", [(0, 5, True), (1, 3, True), (0, 5, False)])
def test_values_and_gradients_match_the_direct_convolution(transforms, pad, size, bias):
    conv = WinogradConv2d(64, 48, 3, padding=pad, bias=bias).to(memory_format=CL)
    x = _maps(6, 64, size, size).requires_grad_()
    assert applies(x, conv)
    y = conv(x)
    want = F.conv2d(x.double(), conv.weight.double(), None if conv.bias is None else conv.bias.double(),
                    padding=pad)
    assert y.shape == want.shape == (6, 48, size + 2 * pad - 2, size + 2 * pad - 2)
    assert y.is_contiguous(memory_format=CL)
    assert _relative(y, want) < 5e-6
    grad = _maps(*want.shape, seed=1)
    params = [x, conv.weight] + ([conv.bias] if bias else [])
    got = torch.autograd.grad(y, params, grad)
    wanted = torch.autograd.grad(want, params, grad.double())
    for g, w in zip(got, wanted):
        assert g.shape == w.shape
        assert _relative(g, w.double()) < 5e-6


def test_the_backward_pass_is_the_exact_adjoint_in_float64():
    # float64 runs the same steps through torch's matmul: gradcheck compares every gradient with finite
    # differences of the forward pass.
    x = _maps(2, 3, 5, 5).double().requires_grad_()
    weight = torch.randn(4, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(conv3x3, (x, weight, bias))
    y = conv3x3(x, weight, bias)  # (the matrices' fractions such as 1/6 are rounded to float32)
    torch.testing.assert_close(y, F.conv2d(x, weight, bias), rtol=1e-6, atol=1e-6)


def test_the_input_alone_gets_a_gradient_when_the_weights_are_frozen(transforms):
    conv = WinogradConv2d(64, 16, 3).to(memory_format=CL).requires_grad_(False)
    x = _maps(3, 64, 5, 5).requires_grad_()
    conv(x).square().sum().backward()
    want = torch.autograd.grad(F.conv2d(x.double(), conv.weight.double(), conv.bias.double()).square().sum(), x)[0]
    assert conv.weight.grad is None and conv.bias.grad is None
    assert _relative(x.grad, want) < 5e-6


@pytest.mark.parametrize("case", ["contiguous input", "7x7 input", "float64", "autocast", "stride 2",
                                  "32 channels"])
def test_other_inputs_run_torchs_own_convolution(case):
    channels = 32 if case == "32 channels" else 64
    conv = WinogradConv2d(channels, 8, 3, stride=2 if case == "stride 2" else 1).to(memory_format=CL)
    x = _maps(2, channels, 7 if case == "7x7 input" else 5, 7 if case == "7x7 input" else 5)
    if case == "contiguous input":
        x = x.contiguous()
    if case == "float64":
        conv, x = conv.double(), x.double()
    assert not applies(x, conv) or case == "autocast"
    if case == "autocast":
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not applies(x, conv)
            assert torch.equal(conv(x), F.conv2d(x, conv.weight, conv.bias, stride=conv.stride))
        return
    assert torch.equal(conv(x), F.conv2d(x, conv.weight, conv.bias, stride=conv.stride))


def test_the_seed_models_third_conv_alone_is_built_for_it():
    model = build_model(load_config(preset="seed").model.layers)
    built = {name: type(layer.op) for name, layer in model.layers.items() if layer.kind == "conv"}
    assert built == {"Conv2D_1": torch.nn.Conv2d, "Conv2D_2": torch.nn.Conv2d, "Conv2D_3": WinogradConv2d}
    same = [{"type": "conv", "name": "a", "filters": 64, "kernel": 3, "padding": "same"},
            {"type": "maxpool", "name": "p", "size": 8},  # 28 -> 3
            {"type": "conv", "name": "b", "filters": 8, "kernel": 3, "padding": "same"},
            {"type": "conv", "name": "c", "filters": 8, "kernel": 3, "padding": "valid"},
            {"type": "flatten", "name": "f"}, {"type": "dense", "name": "d", "units": 10, "activation": "softmax"}]
    model = build_model(resolve_layers(same))
    assert [type(model.layers[n].op) for n in "abc"] == [torch.nn.Conv2d, WinogradConv2d, torch.nn.Conv2d]
    plain = torch.nn.Conv2d(64, 8, 3)
    assert list(model.layers["b"].op.state_dict()) == list(plain.state_dict())


def test_a_trained_step_matches_torchs_convolution_closely():
    torch.manual_seed(0)
    model = build_model(load_config(preset="seed").model.layers).to(memory_format=CL)
    plain = build_model(load_config(preset="seed").model.layers).to(memory_format=CL)
    plain.load_state_dict(model.state_dict())
    plain.layers["Conv2D_3"].op.__class__ = torch.nn.Conv2d
    x = _maps(8, 1, 28, 28)
    labels = torch.arange(8) % 10
    grads = []
    for m in (model, plain):
        F.cross_entropy(m(x), labels).backward()
        grads.append(m.layers["Conv2D_3"].op.weight.grad)
    assert _relative(grads[0], grads[1].double()) < 1e-5


@pytest.mark.parametrize("channels", [64, 20, 3])
def test_the_native_block_transform_matches_matmul_in_strided_layouts(channels):
    kernels = native.prepare(echo=None)
    if kernels is None:
        pytest.skip(f"native kernels unavailable: {native.status()}")
    side = winograd_conv._INPUT  # B^T, 5 x 5
    x = torch.randn(25, 7, channels).transpose(0, 1)  # (7 blocks, 25 positions, C): positions far apart
    out = torch.full((25, 7, channels), float("nan")).transpose(0, 1)
    bias = torch.randn(channels)
    kernels.block_transform(side, x, out, bias)
    torch.testing.assert_close(out, torch.matmul(torch.kron(side, side), x) + bias, rtol=1e-5, atol=1e-5)
    adjoint, g = winograd_conv._OUTPUT_T, torch.randn(7, 9, channels)
    assert adjoint.shape == (5, 3)  # A: a 3x3 block of gradients to 5x5
    got = kernels.block_transform(adjoint, g, torch.empty(7, 25, channels))
    torch.testing.assert_close(got, torch.matmul(torch.kron(adjoint, adjoint), g), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="block_transform"):
        kernels.block_transform(side, x, torch.empty(7, 9, channels))
    with pytest.raises(ValueError, match="block_transform"):
        kernels.block_transform(side, x.transpose(1, 2), out)


def test_it_runs_under_inference_mode_and_no_grad(transforms):
    conv = WinogradConv2d(64, 8, 3).to(memory_format=CL)
    x = _maps(2, 64, 5, 5)
    with torch.inference_mode():
        y = conv(x)
    with torch.no_grad():
        z = conv(x)
    assert torch.equal(y, z)
    assert _relative(y, F.conv2d(x.double(), conv.weight.double(), conv.bias.double())) < 5e-6
