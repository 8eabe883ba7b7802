"""The torch-free inference (cnnlab.numpy_model) against the torch model: every layer kind and activation."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from cnnlab import numpy_model
from cnnlab.config import resolve_layers
from cnnlab.inspection.cache import state_arrays
from cnnlab.model import build_model
from cnnlab.native import arrays

CONV = {"type": "conv", "filters": 6, "kernel": 3}
MODELS = {
    "seed-like: fused first layer and 3x3 pairs": [
        {**CONV, "name": "C1"}, {"type": "maxpool", "name": "P1"}, {**CONV, "name": "C2", "filters": 40},
        {"type": "maxpool", "name": "P2"}, {**CONV, "name": "C3", "filters": 8}, {"type": "flatten", "name": "F"},
        {"type": "dense", "name": "D1", "units": 12}, {"type": "dense", "name": "D2", "units": 10,
                                                      "activation": "softmax"}],
    "same padding, strides, odd sizes, 5x5 first layer": [
        {**CONV, "name": "C1", "kernel": 5, "padding": "same"}, {"type": "maxpool", "name": "P1"},
        {**CONV, "name": "C2", "padding": "same", "activation": "tanh"}, {"type": "maxpool", "name": "P2", "size": 3,
                                                                          "stride": 2, "padding": "same"},
        {**CONV, "name": "C3", "kernel": 2, "stride": 2, "padding": "same", "activation": "elu"},
        {"type": "avgpool", "name": "A", "size": 2, "padding": "same"}, {"type": "flatten", "name": "F"},
        {"type": "dense", "name": "D", "units": 10, "activation": "linear"}],
    "batch norm, dropout, activation layers, global pooling, no bias": [
        {**CONV, "name": "C1", "use_bias": False, "activation": "linear"}, {"type": "batchnorm", "name": "B1"},
        {"type": "activation", "name": "R", "activation": "sigmoid"}, {"type": "avgpool", "name": "A", "size": 3},
        {"type": "dropout", "name": "Dr", "rate": 0.5}, {**CONV, "name": "C2", "kernel": 4, "filters": 33},
        {"type": "globalavgpool", "name": "G"}, {"type": "batchnorm", "name": "B2"},
        {"type": "dense", "name": "D", "units": 7, "activation": "softmax"}],
    "3x3 convs no pool follows (Winograd's F(3x3, 3x3)), same and valid, blocks cut at the edges": [
        {**CONV, "name": "C1", "filters": 64, "padding": "same"},
        {**CONV, "name": "C2", "filters": 64, "padding": "same"}, {**CONV, "name": "C3", "filters": 17},
        {"type": "maxpool", "name": "P", "size": 3}, {"type": "flatten", "name": "F"},
        {"type": "dense", "name": "D", "units": 10, "activation": "linear"}],
}


def _model(specs: list[dict]) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(resolve_layers(specs)).eval()
    with torch.no_grad():  # batch norm with running statistics of its own, not the identity
        for name, buffer in model.named_buffers():
            if name.endswith("running_mean"):
                buffer.uniform_(-0.5, 0.5)
            elif name.endswith("running_var"):
                buffer.uniform_(0.5, 2.0)
    return model


@pytest.mark.parametrize("name", list(MODELS))
def test_every_layer_and_the_logits_match_the_torch_model(name):
    model = _model(MODELS[name])
    engine = numpy_model.NumpyModel([layer.spec for layer in model.layers.values()], state_arrays(model))
    x = torch.randn(5, 1, 28, 28)
    with torch.no_grad():
        want_logits, want = model.outputs(x, model.layer_names, logits=True)
    logits, got = engine.outputs(x.numpy(), model.layer_names, logits=True)
    np.testing.assert_allclose(logits, want_logits.numpy(), rtol=1e-4, atol=1e-5)
    for layer in model.layer_names:
        assert got[layer].shape == tuple(want[layer].shape), layer
        np.testing.assert_allclose(got[layer], want[layer].numpy(), rtol=1e-4, atol=1e-5, err_msg=layer)
    fused = [layer for layer in model.layer_names if layer not in ("C1", "C2")]  # the pairs fuse when unasked
    scores, only = engine.outputs(x.numpy(), fused, logits=True)
    np.testing.assert_allclose(scores, logits, rtol=1e-5, atol=1e-6)
    scores, stopped = engine.outputs(x.numpy(), [model.layer_names[2]], logits=False)
    assert scores is None and list(stopped) == [model.layer_names[2]]


def test_the_native_kernels_serve_the_seed_pairs_and_numpy_the_rest_gives_the_same():
    if arrays.load() is None:
        pytest.skip("the native kernels are not built on this machine")
    model = _model(MODELS["seed-like: fused first layer and 3x3 pairs"])
    specs, weights = [layer.spec for layer in model.layers.values()], state_arrays(model)
    engine = numpy_model.NumpyModel(specs, weights)
    calls = []
    for kernel in ("conv_pool_forward", "winograd_pool_forward"):
        real = getattr(engine.kernels, kernel)
        setattr(engine.kernels, kernel, lambda *a, real=real, k=kernel, **kw: calls.append(k) or real(*a, **kw))
    x = np.random.default_rng(1).standard_normal((9, 1, 28, 28)).astype(np.float32)
    fast, _ = engine.outputs(x)
    assert calls == ["conv_pool_forward", "winograd_pool_forward"]
    engine.kernels = None  # numpy's own loops: im2col convolutions, windowed pools
    slow, _ = engine.outputs(x)
    np.testing.assert_allclose(fast, slow, rtol=1e-5, atol=1e-5)


MEANS_MODELS = {
    "seed-like": MODELS["seed-like: fused first layer and 3x3 pairs"],
    "odd maps the pools leave a row and column of, same padding": [
        {**CONV, "name": "C1", "kernel": 4}, {"type": "maxpool", "name": "P1"},  # 25 x 25 -> 12 x 12
        {**CONV, "name": "C2", "padding": "same", "filters": 17}, {"type": "maxpool", "name": "P2"},  # 12 -> 6
        {**CONV, "name": "C3", "filters": 9}, {"type": "maxpool", "name": "P3"},  # 4 -> 2
        {**CONV, "name": "C4", "kernel": 1, "filters": 5}, {"type": "flatten", "name": "F"},
        {"type": "dense", "name": "D", "units": 10, "activation": "softmax"}],
}


@pytest.mark.parametrize("name", list(MEANS_MODELS))
def test_map_means_from_the_fused_kernels_equal_the_maps_means(name):
    """A conv layer whose means alone are asked keeps its fused kernel, which sums each pooling window; the rows
    and columns a pool leaves out are added from numpy; the logits of that pass are the logits-only pass's bits."""
    if arrays.load() is None:
        pytest.skip("the native kernels are not built on this machine")
    model = _model(MEANS_MODELS[name])
    engine = numpy_model.NumpyModel([layer.spec for layer in model.layers.values()], state_arrays(model))
    convs = [n for n, layer in model.layers.items() if layer.kind == "conv"]
    x = np.random.default_rng(3).standard_normal((7, 1, 28, 28)).astype(np.float32)
    _, maps = engine.outputs(x, convs, logits=False)
    asked = []
    for kernel in ("conv_pool_forward", "winograd_pool_forward"):
        real = getattr(engine.kernels, kernel)
        setattr(engine.kernels, kernel,
                lambda *a, real=real, **kw: asked.append(kw.get("sums", False)) or real(*a, **kw))
    got = engine.forward(x, means=convs)
    fused = sum(1 for n in convs if model.layer_names.index(n) + 1 < len(model.layer_names)
                and model.layers[model.layer_names[model.layer_names.index(n) + 1]].kind == "maxpool")
    assert asked == [True] * fused and fused >= 2
    for layer in convs:
        assert got.means[layer].shape == (7, maps[layer].shape[1]) and got.means[layer].dtype == np.float32
        np.testing.assert_allclose(got.means[layer], maps[layer].mean(axis=(2, 3)), rtol=1e-5, atol=1e-6,
                                   err_msg=layer)
    assert got.maps == {}
    # the logits and the means are the same bits whatever maps the pass also gives
    np.testing.assert_array_equal(got.logits, engine.outputs(x, logits=True)[0])
    both = engine.forward(x, convs, convs)
    np.testing.assert_array_equal(both.logits, got.logits)
    for layer in convs:
        np.testing.assert_array_equal(both.means[layer], got.means[layer], err_msg=layer)
        np.testing.assert_array_equal(both.maps[layer], maps[layer], err_msg=layer)


def test_chunks_side_by_side_give_the_bits_of_one_pass_at_a_time():
    model = _model(MODELS["seed-like: fused first layer and 3x3 pairs"])
    engine = numpy_model.NumpyModel([layer.spec for layer in model.layers.values()], state_arrays(model))
    x = np.random.default_rng(2).standard_normal((300, 1, 28, 28)).astype(np.float32)
    whole = np.concatenate([got.logits for _, got in engine.chunked_outputs(x, chunk=256)])
    np.testing.assert_array_equal(whole[256:], engine.outputs(x[256:])[0])
    means = engine.map_means(x, "C3", chunk=100)
    # to float rounding: C3's BLAS product sums in another order for 100 images than for 300 on some CPUs (an
    # AMD EPYC Zen 4: 2.6e-8 apart, which near-zero means make 5e-6 relative), so an absolute floor of 2e-7
    np.testing.assert_allclose(means, engine.outputs(x, ["C3"])[1]["C3"].mean(axis=(2, 3)), rtol=1e-6, atol=2e-7)


def test_what_it_does_not_serve_is_refused():
    assert not numpy_model.supports(resolve_layers([{**CONV, "activation": "gelu"}, {"type": "flatten"},
                                                    {"type": "dense", "units": 10, "activation": "softmax"}]))
    model = _model(MODELS["seed-like: fused first layer and 3x3 pairs"])
    specs, weights = [layer.spec for layer in model.layers.values()], state_arrays(model)
    with pytest.raises(ValueError, match="lack C2's bias"):
        numpy_model.NumpyModel(specs, {k: v for k, v in weights.items() if k != "layers.C2.op.bias"})
    with pytest.raises(ValueError, match="gelu"):
        numpy_model.NumpyModel([{**specs[0], "activation": "gelu"}, *specs[1:]], weights)


def test_the_numpy_model_and_the_normalizer_import_no_torch(tmp_path):
    code = ("import sys, numpy as np; from cnnlab import numpy_model; from cnnlab.data import Normalizer; "
            "from cnnlab.native import arrays; arrays.load(); "
            "x = Normalizer('pixel', np.full((28, 28), 3.0), np.full((28, 28), 7.0)).apply_numpy("
            "np.arange(784, dtype=np.uint8).reshape(1, 28, 28)); print(x.shape, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["(1,", "1,", "28,", "28)", "False"]


def test_the_numpy_normalizer_gives_the_bits_of_torchs():
    from cnnlab.data import Normalizer

    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (20, 28, 28), dtype=np.uint8)
    for norm in (Normalizer("pixel", rng.random((28, 28)) * 100, rng.random((28, 28)) * 80 + 1),
                 Normalizer("global", np.float32(33.3), np.float32(78.1)), Normalizer("unit", 0.0, 255.0)):
        np.testing.assert_array_equal(norm.apply_numpy(images), norm.apply(images).numpy())


def test_every_kind_it_serves_is_registered_and_compared_here():
    from cnnlab import layers as kinds

    tested = {spec["type"] for specs in MODELS.values() for spec in specs}
    assert set(numpy_model.KINDS) <= set(kinds.names()) and tested == set(numpy_model.KINDS)
    activations = {spec.get("activation") for specs in MODELS.values() for spec in specs} | {"relu"}
    assert set(numpy_model.ACTIVATIONS) <= activations
    assert not numpy_model.supports([{"type": "a kind added later", "name": "x"}])
