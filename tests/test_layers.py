"""Every registered layer kind: builds, round-trips its config, counts MACs, converts from Keras.

A new kind needs one entry in EXAMPLES (and in KERAS where it imports a Keras class); the first test fails until
it has one.
"""

import os

import numpy as np
import pytest
import torch

from cnnlab import layers as kinds
from cnnlab.config import from_dict, from_toml
from cnnlab.errors import CnnlabError
from cnnlab.layers import table
from cnnlab.model import build_model, layer_table

# kind: (layer table, input shape of one image, output shape, MACs, parameters), all computed by hand
EXAMPLES = {
    "conv": ({"type": "conv", "filters": 4, "kernel": 3}, (2, 8, 8), (4, 6, 6), 4 * 6 * 6 * 2 * 9, 4 * 2 * 9 + 4),
    "maxpool": ({"type": "maxpool", "size": 3, "stride": 2}, (2, 9, 9), (2, 4, 4), 0, 0),
    "avgpool": ({"type": "avgpool", "size": 2, "padding": "same"}, (2, 7, 7), (2, 4, 4), 0, 0),
    "flatten": ({"type": "flatten"}, (2, 3, 4), (24,), 0, 0),
    "dense": ({"type": "dense", "units": 5, "use_bias": False}, (12,), (5,), 12 * 5, 12 * 5),
    "dropout": ({"type": "dropout", "rate": 0.25}, (12,), (12,), 0, 0),
    "batchnorm": ({"type": "batchnorm"}, (3, 5, 5), (3, 5, 5), 0, 2 * 3),
    "activation": ({"type": "activation", "activation": "tanh"}, (2, 5, 5), (2, 5, 5), 0, 0),
    "globalavgpool": ({"type": "globalavgpool"}, (3, 5, 4), (3,), 0, 0),
}


def test_every_registered_kind_has_an_example():
    assert set(EXAMPLES) == set(kinds.names())


@pytest.mark.parametrize("name", kinds.names())
def test_kind_builds_with_the_hand_computed_shape_macs_and_params(name):
    spec, in_shape, out_shape, macs, params = EXAMPLES[name]
    kind = kinds.get(name)
    resolved = kinds.resolve(spec, "layer")
    op = kind.build(resolved, in_shape).eval()
    with torch.no_grad():
        out = op(torch.randn(2, *in_shape))
    assert tuple(out.shape[1:]) == out_shape
    assert kind.macs(resolved, in_shape, out_shape) == macs
    assert sum(p.numel() for p in op.parameters()) == params
    if kind.has_kernel:  # a kernel maps inputs to outputs: (out, in, ...) in torch order
        assert op.weight.dim() >= 2 and op.weight.shape[0] == out_shape[0]


# Specs whose shapes are easy to get wrong (odd sizes, "same" padding with even kernels or strides, the native
# 2x2 pool), besides each kind's example: the torch-free shapes must equal the built module's.
VARIANTS = [
    ({"type": "conv", "filters": 3, "kernel": 4, "stride": 2, "padding": "same"}, (2, 7, 9)),
    ({"type": "conv", "filters": 3, "kernel": 2, "padding": "same", "use_bias": False}, (1, 5, 5)),
    ({"type": "conv", "filters": 2, "kernel": 3, "stride": 2}, (3, 8, 7)),
    ({"type": "conv", "filters": 2, "kernel": 5, "padding": "same"}, (1, 6, 6)),
    ({"type": "maxpool"}, (2, 7, 9)),
    ({"type": "maxpool", "size": 3, "stride": 2, "padding": "same"}, (2, 8, 7)),
    ({"type": "avgpool", "size": 3, "stride": 2}, (2, 9, 8)),
    ({"type": "avgpool", "size": 2, "stride": 1, "padding": "same"}, (1, 5, 4)),
    ({"type": "flatten"}, (6,)),
    ({"type": "dense", "units": 4}, (9,)),
    ({"type": "batchnorm"}, (7,)),
    ({"type": "globalavgpool"}, (5, 1, 1)),
]


@pytest.mark.parametrize("spec, in_shape", [(EXAMPLES[n][0], EXAMPLES[n][1]) for n in kinds.names()] + VARIANTS,
                         ids=lambda x: x.get("type") if isinstance(x, dict) else "x".join(map(str, x)))
def test_torch_free_shapes_equal_the_built_modules(spec, in_shape):
    resolved = kinds.resolve(spec, "layer")
    kind = kinds.get(resolved["type"])
    op = kind.build(resolved, in_shape).eval()
    with torch.no_grad():
        out = op(torch.randn(2, *in_shape))
    assert kind.output_shape(resolved, in_shape) == tuple(out.shape[1:])
    assert kind.param_shapes(resolved, in_shape) == [tuple(p.shape) for p in op.parameters()]
    if kind.has_kernel:  # the first parameter shape is the kernel, the MACs one per kernel weight per output
        assert kind.param_shapes(resolved, in_shape)[0] == tuple(op.weight.shape)
        assert kind.macs(resolved, in_shape, tuple(out.shape[1:])) == out[0].numel() * op.weight[0].numel()


def _model_layers(name):
    """The example inside a whole model for MNIST: a flatten before a kind that needs one, a dense head after."""
    spec, in_shape, out_shape = EXAMPLES[name][:3]
    before = [{"type": "flatten"}] if len(in_shape) == 1 else []
    after = [{"type": "flatten"}] if len(EXAMPLES[name][2]) == 3 else []
    return [*before, {**spec, "name": "probe"}, *after, {"type": "dense", "units": 10, "activation": "softmax"}]


@pytest.mark.parametrize("name", kinds.names())
def test_kind_round_trips_its_config_and_shows_in_the_table(name):
    cfg = from_dict({"model": {"layers": _model_layers(name)}})
    probe = next(layer for layer in cfg.model.layers if layer["name"] == "probe")
    assert set(probe) == {"type", "name", *kinds.get(name).keys}
    assert from_toml(cfg.to_toml()) == cfg
    model = build_model(cfg.model.layers)
    rows = {r.name: r for r in layer_table(model)}
    assert rows["probe"].type == kinds.get(name).label
    assert table.layer_table(cfg.model.layers) == layer_table(model)  # the torch-free table, row for row
    assert rows["probe"].params == sum(p.numel() for p in model.layers["probe"].parameters())
    unnamed = from_dict({"model": {"layers": [{k: v for k, v in lay.items() if k != "name"}
                                              for lay in _model_layers(name)]}})
    assert f"{kinds.get(name).keras_name}_1" in [lay["name"] for lay in unnamed.model.layers]


@pytest.mark.parametrize("name", kinds.names())
def test_kind_rejects_unknown_keys_and_wrong_input_rank(name):
    spec, in_shape = EXAMPLES[name][:2]
    with pytest.raises(CnnlabError, match=rf"^model\.layers\[0\]\.colour: not a key of a {name} layer; valid keys: "
                                          "name"):
        from_dict({"model": {"layers": [{**spec, "colour": 1}]}})
    kind = kinds.get(name)
    wrong = {"maps": (12,), "flat": (2, 3, 3)}.get(kind.needs)
    if wrong is not None:
        with pytest.raises(CnnlabError, match=f"a {name} layer needs"):
            kind.check_input(wrong, "here")
    kind.check_input(in_shape, "here")


def test_required_keys_are_named():
    with pytest.raises(CnnlabError, match=r"^model\.layers\[0\]\.filters: missing; a conv layer needs 'filters'$"):
        from_dict({"model": {"layers": [{"type": "conv"}]}})
    with pytest.raises(CnnlabError, match=r"model\.layers\[0\]\.type: 'conv2d' is not one of conv, .* "
                                          r"\(did you mean 'conv'\?\)"):
        from_dict({"model": {"layers": [{"type": "conv2d"}]}})


# ---------------------------------------------------------------------------------------------------------
# Keras: each kind that names Keras classes converts a Keras layer to the same outputs

KERAS = {
    "conv": lambda L: L.Conv2D(3, 3, strides=2, padding="same", activation="relu"),
    "maxpool": lambda L: L.MaxPooling2D(3, strides=2, padding="same"),
    "avgpool": lambda L: L.AveragePooling2D(2),
    "flatten": lambda L: L.Flatten(),
    "dense": lambda L: L.Dense(7, activation="tanh"),
    "dropout": lambda L: L.Dropout(0.4),
    "batchnorm": lambda L: L.BatchNormalization(),
    "activation": lambda L: L.Activation("elu"),
    "globalavgpool": lambda L: L.GlobalAveragePooling2D(),
}


def test_every_keras_class_has_a_keras_example():
    assert {name for name in kinds.names() if kinds.get(name).keras_classes} == set(KERAS)


@pytest.mark.parametrize("name", sorted(KERAS))
@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
def test_kind_converts_from_keras_to_the_same_probabilities(name, tmp_path):
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    import cnnlab

    L = keras.layers
    kind = kinds.get(name)
    before = [L.Flatten()] if len(EXAMPLES[name][1]) == 1 else []
    after = [L.Flatten()] if len(EXAMPLES[name][2]) == 3 else []
    model = keras.Sequential([keras.Input((28, 28, 1)), *before, KERAS[name](L), *after,
                              L.Dense(10, activation="softmax")])
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):  # statistics away from Keras' 0 and 1 starts
            layer.set_weights([rng.uniform(0.5, 1.5, w.shape).astype(np.float32) for w in layer.get_weights()])
        elif layer.get_weights():
            layer.set_weights([rng.normal(0, 0.3, w.shape).astype(np.float32) for w in layer.get_weights()])
    path = tmp_path / "model.keras"
    model.save(path)
    run = cnnlab.load(cnnlab.import_keras(path, out=tmp_path / "run").run_dir)
    assert kinds.get(run.config.model.layers[len(before)]["type"]) is kind
    images = rng.integers(0, 256, (6, 28, 28), dtype=np.uint8)
    expected = keras.ops.convert_to_numpy(model(images[..., None].astype(np.float32) / 255, training=False))
    np.testing.assert_allclose(run.predict(images), expected, atol=1e-5)


def test_global_average_pooling_is_the_mean_of_each_map():
    op = kinds.get("globalavgpool").build(kinds.resolve({"type": "globalavgpool"}, "layer"), (2, 2, 3))
    x = torch.arange(12.0).reshape(1, 2, 2, 3)  # map 0: 0..5, map 1: 6..11
    torch.testing.assert_close(op(x), torch.tensor([[2.5, 8.5]]))


# -- Keras configs the conversions refuse or fill in -----------------------------------------------------------


def _convert(class_name, config):
    from pathlib import Path

    from cnnlab.interop.keras_import import KerasFile, convert_layers
    from cnnlab.layers import KerasLayer

    dense = KerasLayer("Dense", "out", {"units": 10, "activation": "softmax"})
    kfile = KerasFile(Path("m.keras"), "keras", "", "", "", (28, 28, 1), [KerasLayer(class_name, "l", config), dense],
                      None)
    return convert_layers(kfile)[0][0]


@pytest.mark.parametrize("class_name, config", [
    ("Conv2D", {"filters": 4, "kernel_size": [3, 3], "data_format": "channels_first"}),
    ("MaxPooling2D", {"pool_size": [2, 2], "data_format": "channels_first"}),
    ("Flatten", {"data_format": "channels_first"}),
    ("GlobalAveragePooling2D", {"data_format": "channels_first"}),
])
def test_keras_import_refuses_channels_first_layers(class_name, config):
    with pytest.raises(CnnlabError) as err:
        _convert(class_name, config)
    assert str(err.value) == ("m.keras: layer 'l' uses data_format 'channels_first'; cnnlab reads channels_last "
                              "models")


def test_keras_import_reads_square_sizes_and_fills_in_missing_strides():
    assert _convert("MaxPooling2D", {"pool_size": [3, 3], "strides": None}) == {
        "type": "maxpool", "name": "l", "size": 3, "stride": 3, "padding": "valid"}
    assert _convert("AveragePooling2D", {"pool_size": 2, "strides": [1, 1], "padding": "same"})["stride"] == 1
    conv = _convert("Conv2D", {"filters": 4, "kernel_size": [5, 5], "activation": "relu"})
    assert (conv["kernel"], conv["stride"]) == (5, 1)
    with pytest.raises(CnnlabError) as err:
        _convert("Conv2D", {"filters": 4, "kernel_size": [3, 5]})
    assert str(err.value) == ("m.keras: layer 'l' has kernel_size [3, 5]; cnnlab supports equal sizes in both "
                              "directions only, e.g. [3, 3]")
