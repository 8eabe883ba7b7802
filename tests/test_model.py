"""Model builder: shapes and parameter counts against hand computation, names, initialization, padding."""

import math

import pytest
import torch

from cnnlab.config import load_config, resolve_layers
from cnnlab.errors import CnnlabError
from cnnlab.model import build_model, count_parameters, format_table, layer_table


def seed_model():
    return build_model(load_config(preset="seed").model.layers)


def test_seed_model_shapes_and_parameters_match_hand_computation():
    rows = {r.name: r for r in layer_table(seed_model())}
    # 28 -3+1 = 26, pool 13, -2 = 11, pool 5, -2 = 3; flatten 3*3*128 = 1152
    assert rows["Conv2D_1"].output_shape == (32, 26, 26)
    assert rows["Max_Pool_1"].output_shape == (32, 13, 13)
    assert rows["Conv2D_2"].output_shape == (64, 11, 11)
    assert rows["Max_Pool_2"].output_shape == (64, 5, 5)
    assert rows["Conv2D_3"].output_shape == (128, 3, 3)
    assert rows["Flatten_1"].output_shape == (1152,)
    assert rows["Conv2D_1"].params == 32 * 9 + 32
    assert rows["Conv2D_2"].params == 64 * 32 * 9 + 64
    assert rows["Conv2D_3"].params == 128 * 64 * 9 + 128
    assert rows["Dense_1"].params == 1152 * 100 + 100
    assert rows["Dense_2"].params == 100 * 10 + 10
    assert count_parameters(seed_model()) == 208_982
    assert rows["Conv2D_2"].macs == 64 * 11 * 11 * 32 * 9
    assert rows["Dense_1"].macs == 1152 * 100
    assert rows["Conv2D_2"].torch_weight_shape == (64, 32, 3, 3)
    assert rows["Conv2D_2"].keras_weight_shape == (3, 3, 32, 64)
    assert rows["Dense_1"].torch_weight_shape == (100, 1152)
    assert rows["Dense_1"].keras_weight_shape == (1152, 100)


@pytest.mark.parametrize("preset", ["seed", "tiny", "fast", "fashion"])
def test_the_layer_kinds_shapes_equal_a_real_forward_pass(preset):
    model = build_model(load_config(preset=preset).model.layers).eval()
    with torch.no_grad():
        _, got = model.outputs(torch.zeros(2, 1, 28, 28), model.layer_names)
    assert {name: tuple(x.shape[1:]) for name, x in got.items()} == model.output_shapes


def test_table_text_has_totals():
    text = format_table(seed_model())
    assert "208,982" in text and "Conv2D_3" in text and "(3, 3, 64, 128)" in text


def test_forward_gives_logits_and_activation_gives_named_outputs():
    model = seed_model().eval()
    x = torch.randn(3, 1, 28, 28)
    logits = model(x)
    assert logits.shape == (3, 10)
    torch.testing.assert_close(model.probabilities(x).sum(1), torch.ones(3))
    act = model.activation(x, "Conv2D_1")
    manual = torch.relu(torch.nn.functional.conv2d(x, model.layers["Conv2D_1"].op.weight,
                                                   model.layers["Conv2D_1"].op.bias))
    torch.testing.assert_close(act, manual)
    assert model.activation(x, "Max_Pool_2").shape == (3, 64, 5, 5)
    with pytest.raises(CnnlabError, match="valid names: Conv2D_1, Max_Pool_1"):
        model.activation(x, "Conv2D_9")


def test_keras_initialization_is_glorot_uniform_with_zero_bias():
    torch.manual_seed(0)
    model = seed_model()
    w = model.layers["Dense_1"].op.weight
    limit = math.sqrt(6 / (1152 + 100))
    assert w.abs().max() <= limit and w.abs().max() > 0.95 * limit
    conv = model.layers["Conv2D_2"].op.weight
    assert conv.abs().max() <= math.sqrt(6 / (32 * 9 + 64 * 9))
    assert all(float(layer.op.bias.detach().abs().sum()) == 0 for layer in model.layers.values() if layer.kind in ("conv", "dense"))


def test_torch_initialization_keeps_torch_defaults():
    torch.manual_seed(0)
    model = build_model(load_config(preset="seed").model.layers, init="torch")
    assert float(model.layers["Dense_1"].op.bias.detach().abs().sum()) > 0


def layers(*specs):
    return resolve_layers(list(specs))


def test_same_padding_keeps_size_and_stride_two_rounds_up():
    model = build_model(layers({"type": "conv", "filters": 2, "kernel": 3, "padding": "same"},
                               {"type": "conv", "filters": 2, "kernel": 3, "stride": 2, "padding": "same"},
                               {"type": "maxpool", "size": 2, "padding": "same"},
                               {"type": "avgpool", "size": 3, "stride": 2, "padding": "same"},
                               {"type": "flatten"}, {"type": "dense", "units": 10, "activation": "softmax"}))
    shapes = model.output_shapes
    assert shapes["conv2d_1"] == (2, 28, 28)
    assert shapes["conv2d_2"] == (2, 14, 14)  # ceil(28/2)
    assert shapes["max_pooling2d_1"] == (2, 7, 7)
    assert shapes["average_pooling2d_1"] == (2, 4, 4)  # ceil(7/2)


def test_avgpool_same_does_not_count_padding():
    model = build_model(layers({"type": "avgpool", "size": 2, "padding": "same"}, {"type": "flatten"},
                               {"type": "dense", "units": 2, "activation": "softmax"}))
    x = torch.ones(1, 1, 28, 28)
    model2 = build_model(layers({"type": "avgpool", "size": 3, "stride": 3, "padding": "same"}, {"type": "flatten"},
                                {"type": "dense", "units": 2, "activation": "softmax"}))
    out = model2.activation(x, "average_pooling2d_1")
    assert out.shape == (1, 1, 10, 10)
    torch.testing.assert_close(out, torch.ones_like(out))  # an average of ones stays one at the border
    assert model.activation(x, "average_pooling2d_1").shape == (1, 1, 14, 14)


def test_dropout_batchnorm_and_kernels():
    model = build_model(layers({"type": "conv", "filters": 4}, {"type": "batchnorm"}, {"type": "flatten"},
                               {"type": "dropout", "rate": 0.5}, {"type": "dense", "units": 10, "activation": "linear"}))
    assert model.output_shapes["batch_normalization_1"] == (4, 26, 26)
    bn = model.layers["batch_normalization_1"].op
    assert bn.eps == pytest.approx(0.001) and bn.momentum == pytest.approx(0.01)
    assert [k.shape for k in model.kernels("conv")] == [torch.Size([4, 1, 3, 3])]
    assert [k.shape for k in model.kernels("dense")] == [torch.Size([10, 4 * 26 * 26])]
    assert len(model.kernels("all")) == 2


def test_dense_without_flatten_and_too_small_input_are_clear_errors():
    with pytest.raises(CnnlabError, match="add a flatten layer before it"):
        build_model(layers({"type": "conv", "filters": 2}, {"type": "dense", "units": 10, "activation": "softmax"}))
    with pytest.raises(CnnlabError, match="too small"):
        build_model(layers(*[{"type": "maxpool", "size": 2}] * 5, {"type": "flatten"},
                           {"type": "dense", "units": 10, "activation": "softmax"}))


def test_pooling_before_relu_gives_the_same_values_and_gradients(monkeypatch):
    """forward() pools before the relu where a relu layer feeds a max-pool; the layer-by-layer path does not."""
    from cnnlab import native

    monkeypatch.setattr(native, "conv_max_pool", lambda x, conv, relu=False: None)  # bit for bit: torch's conv both ways
    torch.manual_seed(1)
    model = seed_model()
    x = torch.randn(8, 1, 28, 28)
    fast = model(x)
    step = x
    for layer in list(model.layers.values())[:-1]:
        step = layer(step)
    slow = list(model.layers.values())[-1].op(step)
    assert torch.equal(fast, slow)
    grads = []
    for out in (fast, slow):
        model.zero_grad()
        out.square().sum().backward(retain_graph=True)
        grads.append([p.grad.clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*grads))
    assert model._plan[:2] == [("Conv2D_1", "Max_Pool_1"), ("Conv2D_2", "Max_Pool_2")]
