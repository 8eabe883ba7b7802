"""Keras import and ONNX export, checked against Keras itself (Keras 3 on the torch backend: no TensorFlow).

Each test builds a small Keras model with random weights, saves it as ``.keras`` and legacy ``.h5``, imports it
and compares cnnlab's probabilities and the activations of every named layer with Keras' own outputs.
"""

import json
import os
import sys
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

os.environ["KERAS_BACKEND"] = "torch"  # must precede the first keras import
keras = pytest.importorskip("keras")
from keras import layers as L  # noqa: E402

import cnnlab  # noqa: E402
from cnnlab import store  # noqa: E402
from cnnlab.cli import main  # noqa: E402
from cnnlab.config import from_dict  # noqa: E402
from cnnlab.data import fit_normalizer  # noqa: E402
from cnnlab.errors import CnnlabError  # noqa: E402
from cnnlab.interop import export_onnx, import_keras  # noqa: E402
from cnnlab.model import build_model, format_table  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # Keras vs numpy 2

TOL = 1e-5
FORMATS = ("keras", "h5")


# ---------------------------------------------------------------------------------------------------------
# Keras models and helpers


def conv_pool_dense():
    """Valid and same padding, strides, max and average pooling, dropout, softmax."""
    return keras.Sequential([
        keras.Input((28, 28, 1)),
        L.Conv2D(4, 3, activation="relu", name="Conv2D_1"),
        L.MaxPooling2D(2, name="Max_Pool_1"),
        L.Conv2D(6, 3, strides=2, padding="same", activation="tanh", name="Conv2D_2"),
        L.AveragePooling2D(2, padding="same", name="Avg_Pool_1"),
        L.Flatten(name="Flatten_1"),
        L.Dense(12, activation="relu", name="Dense_1"),
        L.Dropout(0.3, name="Dropout_1"),
        L.Dense(10, activation="softmax", name="Dense_2"),
    ], name="conv_pool_dense")


def batchnorm_same():
    """BatchNormalization on maps and on flat features, Activation layers, odd pool sizes with same padding."""
    return keras.Sequential([
        keras.Input((28, 28, 1)),
        L.Conv2D(5, 3, padding="same", name="conv"),
        L.BatchNormalization(name="bn_maps"),
        L.Activation("relu", name="relu"),
        L.MaxPooling2D(3, strides=2, padding="same", name="pool"),
        L.Conv2D(4, 5, strides=2, padding="same", activation="elu", name="conv_2"),
        L.AveragePooling2D(3, strides=2, padding="same", name="avg"),
        L.Flatten(name="flat"),
        L.BatchNormalization(name="bn_flat"),
        L.Dense(10, name="logits"),
        L.Activation("softmax", name="softmax"),  # folded into "logits" by the import
    ], name="batchnorm_same")


def flat_input():
    """An MLP on (28, 28) input; the output gives logits (linear)."""
    return keras.Sequential([
        keras.Input((28, 28)),
        L.Flatten(name="flat"),
        L.Dense(16, activation="sigmoid", name="hidden"),
        L.Dense(10, name="scores"),
    ], name="flat_input")


def functional_chain():
    """A functional model that is one chain, with a leading Reshape from (28, 28) to (28, 28, 1)."""
    inputs = keras.Input((28, 28))
    x = L.Reshape((28, 28, 1), name="reshape")(inputs)
    x = L.Conv2D(3, 3, activation="gelu", use_bias=False, name="conv")(x)
    x = L.MaxPooling2D(2, name="pool")(x)
    x = L.Flatten(name="flat")(x)
    outputs = L.Dense(10, activation="softmax", name="out")(x)
    return keras.Model(inputs, outputs, name="functional_chain")


MODELS = [conv_pool_dense, batchnorm_same, flat_input, functional_chain]


def randomize(model, seed=0):
    """Random weights everywhere, biases and BatchNorm statistics included (Keras starts them at 0 and 1)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        weights = layer.get_weights()
        if not weights:
            continue
        if isinstance(layer, L.BatchNormalization):
            gamma, beta, mean, var = (w.shape for w in weights)
            new = [rng.uniform(0.5, 1.5, gamma), rng.normal(0, 0.3, beta), rng.normal(0, 0.3, mean),
                   rng.uniform(0.5, 2.0, var)]
        else:
            new = [rng.normal(0, 1 / np.sqrt(np.prod(w.shape[:-1])), w.shape) if w.ndim > 1
                   else rng.normal(0, 0.1, w.shape) for w in weights]
        layer.set_weights([w.astype(np.float32) for w in new])
    return model


def keras_input(images_uint8, model, scale=255.0):
    x = images_uint8.astype(np.float32) / np.float32(scale)
    return x[..., None] if len(model.inputs[0].shape) == 4 else x


def keras_probabilities(model, x):
    out = keras.ops.convert_to_numpy(model(x, training=False))
    if model.layers[-1].get_config().get("activation") == "softmax":
        return out
    return torch.softmax(torch.from_numpy(out), dim=1).numpy()


def keras_activations(model, x):
    """Every layer's output in torch layout: maps as (N, C, H, W), flat features in (C, H, W) order."""
    probe = keras.Model(model.inputs, [layer.output for layer in model.layers])
    outputs = [keras.ops.convert_to_numpy(o) for o in probe([x], training=False)]
    result, perm = {}, None
    for layer, out in zip(model.layers, outputs):
        if out.ndim == 4:
            n, h, w, c = out.shape
            perm = np.arange(h * w * c).reshape(h, w, c).transpose(2, 0, 1).ravel()
            result[layer.name] = out.transpose(0, 3, 1, 2)
        else:
            if isinstance(layer, L.Dense):
                perm = None  # a dense layer's outputs are units, in the same order in both
            result[layer.name] = out[:, perm] if perm is not None else out
    return result


def cnnlab_activations(run, images):
    x = run.prepare(images)
    with torch.no_grad():
        return {name: run.model.activation(x, name).numpy() for name in run.model.layer_names}


def max_diffs(run, model, images, scale=255.0):
    """Max abs differences: probabilities and each cnnlab layer's activation vs the Keras layer of that name."""
    x = keras_input(images, model, scale)
    ours = cnnlab_activations(run, images)
    theirs = keras_activations(model, x)
    # The last cnnlab layer gives the model's output; with a folded final Activation, that layer's output.
    theirs[run.model.layer_names[-1]] = theirs[model.layers[-1].name]
    diffs = {name: float(np.abs(ours[name] - theirs[name]).max()) for name in ours}
    diffs["probabilities"] = float(np.abs(run.predict(images) - keras_probabilities(model, x)).max())
    return diffs


@pytest.fixture(scope="module")
def images(real_mnist):
    return real_mnist.test_images[:64]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Each test model with random weights, saved in both formats: {(model name, format): (keras model, path)}."""
    folder = tmp_path_factory.mktemp("keras")
    out = {}
    for i, make in enumerate(MODELS):
        model = randomize(make(), seed=i)
        model.compile(optimizer=keras.optimizers.Adam(0.002), loss="sparse_categorical_crossentropy")
        for fmt in FORMATS:
            path = folder / f"{make.__name__}.{fmt}"
            model.save(path)
            out[make.__name__, fmt] = (model, path)
    return out


# ---------------------------------------------------------------------------------------------------------
# Import: values


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("make", MODELS, ids=lambda m: m.__name__)
def test_import_gives_keras_probabilities_and_activations(saved, images, tmp_path, make, fmt):
    model, path = saved[make.__name__, fmt]
    report = import_keras(path, out=tmp_path / "run")
    run = cnnlab.load(report.run_dir)
    diffs = max_diffs(run, model, images)
    assert max(diffs.values()) <= TOL, diffs
    keras_names = {layer.name for layer in model.layers}
    assert set(run.model.layer_names) <= keras_names  # the original layer names
    assert len(diffs) == len(run.model.layer_names) + 1


def test_run_folder_is_complete_and_records_its_source(saved, tmp_path):
    import hashlib

    _, path = saved["conv_pool_dense", "h5"]
    report = import_keras(path, out=tmp_path / "run")
    folder = report.run_dir
    for name in (store.CONFIG, store.MODEL, store.INITIAL, store.MANIFEST, store.PROVENANCE):
        assert (folder / name).is_file(), name
    prov = json.loads((folder / store.PROVENANCE).read_text())["imported"]
    assert prov["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert prov["file"] == path.name and prov["format"] == "legacy HDF5 .h5"
    info = json.loads((folder / store.MODEL).read_text())
    assert info["input_shape"] == [1, 28, 28] and info["normalizer"]["mode"] == "unit"
    assert [row["name"] for row in info["layers"]] == [layer.name for layer in saved["conv_pool_dense", "h5"][0].layers]
    run = cnnlab.load(folder)
    assert run.history == [] and run.config.data.split == "standard" and run.config.data.validation == 0
    assert run.config.optimizer["name"] == "adam" and run.config.schedule == {"name": "constant",
                                                                              "learning_rate": 0.002}
    assert (folder / store.INITIAL).read_bytes() == store.checkpoint_path(folder, store.WEIGHTS).read_bytes()


def test_batchnorm_statistics_and_folded_activation(saved, tmp_path):
    model, path = saved["batchnorm_same", "keras"]
    report = import_keras(path, out=tmp_path / "run")
    run = cnnlab.load(report.run_dir)
    assert run.model.layer_names[-1] == "logits" and run.config.model.layers[-1]["activation"] == "softmax"
    assert any("folded" in note for note in report.notes)
    bn = run.model.layers["bn_maps"].op
    gamma, beta, mean, var = model.get_layer("bn_maps").get_weights()
    assert np.array_equal(bn.running_var.numpy(), var) and np.array_equal(bn.weight.detach().numpy(), gamma)


def test_tf2_layout_h5_with_kernel_0_names_and_compile_config(saved, images, tmp_path):
    """The articles' TF2-era files: no InputLayer entry (batch_input_shape on the first layer), weights under
    model_weights/<layer>/<layer>/kernel:0, an InverseTimeDecay schedule and L2 on the dense kernels."""
    model, path = saved["conv_pool_dense", "h5"]
    tf2 = tmp_path / "cnn.h5"
    _rewrite_as_tf2(path, tf2)
    report = import_keras(tf2, out=tmp_path / "run")
    run = cnnlab.load(report.run_dir)
    assert max(max_diffs(run, model, images).values()) <= TOL
    assert report.keras_version == "2.4.0"
    assert run.config.optimizer == {"name": "rmsprop", "rho": 0.9, "momentum": 0.8, "epsilon": 1e-07,
                                    "centered": False, "flavour": "keras"}
    assert run.config.schedule == {"name": "inverse_time", "initial": 0.001, "decay_steps": 1,
                                   "decay_rate": 0.001, "staircase": False}
    assert run.config.regularizer == {"kind": "l2", "factor": 0.001, "applies_to": "dense"}


def _rewrite_as_tf2(src: Path, dst: Path) -> None:
    with h5py.File(src, "r") as old, h5py.File(dst, "w") as new:
        config = json.loads(old.attrs["model_config"])
        entries = config["config"]["layers"]
        shape = entries.pop(0)["config"]["batch_shape"]
        entries[0]["config"]["batch_input_shape"] = shape
        for entry in entries:
            if entry["class_name"] == "Dense":
                entry["config"]["kernel_regularizer"] = {"class_name": "L2", "config": {"l2": 0.0010000000474974513}}
        new.attrs["model_config"] = json.dumps(config).encode()
        new.attrs["keras_version"] = b"2.4.0"
        new.attrs["backend"] = b"tensorflow"
        new.attrs["training_config"] = json.dumps({"loss": "sparse_categorical_crossentropy", "optimizer_config": {
            "class_name": "RMSprop", "config": {
                "name": "RMSprop", "learning_rate": {"class_name": "InverseTimeDecay", "config": {
                    "initial_learning_rate": 0.001, "decay_steps": 1, "decay_rate": 0.001, "staircase": False}},
                "decay": 0.0, "rho": 0.9, "momentum": 0.800000011920929, "epsilon": 1e-07, "centered": False}}})
        weights = new.create_group("model_weights")
        names = [n.decode() if isinstance(n, bytes) else n for n in old["model_weights"].attrs["layer_names"]]
        weights.attrs["layer_names"] = [n.encode() for n in names]
        for name in names:
            group = weights.create_group(name)
            found = {}
            old["model_weights"][name].visititems(
                lambda key, obj: found.__setitem__(key.rsplit("/", 1)[-1], obj[()])
                if isinstance(obj, h5py.Dataset) else None)
            group.attrs["weight_names"] = [f"{name}/{k}:0".encode() for k in found]
            for key, value in found.items():
                group.create_dataset(f"{name}/{key}:0", data=value)


@pytest.mark.parametrize("mode, scale", [("none", 1.0), ("pixel", None)])
def test_normalize_none_and_pixel(real_mnist, images, tmp_path, mode, scale):
    model = randomize(conv_pool_dense(), seed=7)
    path = tmp_path / "m.keras"
    model.save(path)
    report = import_keras(path, out=tmp_path / "run", normalize=mode, mnist=real_mnist)
    run = cnnlab.load(report.run_dir)
    assert run.normalizer.mode == mode and run.config.data.normalize == mode
    if mode == "pixel":
        norm = fit_normalizer("pixel", real_mnist.train_images)
        x = norm.apply(images).numpy().transpose(0, 2, 3, 1)
        assert np.array_equal(run.normalizer.mean, norm.mean)
        fit = json.loads((report.run_dir / store.PROVENANCE).read_text())["imported"]["normalizer_fit"]
        assert fit["data_md5"] == real_mnist.md5
    else:
        x = keras_input(images, model, scale)
    assert np.abs(run.predict(images) - keras_probabilities(model, x)).max() <= TOL


def test_seed_architecture_trained_in_keras_gives_the_same_predictions(real_mnist, tmp_path):
    """The articles' model, trained briefly in Keras (their optimizer, schedule and L2), saved both ways."""
    keras.utils.set_random_seed(0)
    l2 = keras.regularizers.L2(0.001)
    model = keras.Sequential([
        keras.Input((28, 28, 1)),
        L.Conv2D(32, 3, activation="relu", name="Conv2D_1"), L.MaxPooling2D(2, name="Max_Pool_1"),
        L.Conv2D(64, 3, activation="relu", name="Conv2D_2"), L.MaxPooling2D(2, name="Max_Pool_2"),
        L.Conv2D(128, 3, activation="relu", name="Conv2D_3"), L.Flatten(name="Flatten_1"),
        L.Dense(100, activation="relu", kernel_regularizer=l2, name="Dense_1"),
        L.Dense(10, activation="softmax", kernel_regularizer=l2, name="Dense_2")])
    schedule = keras.optimizers.schedules.InverseTimeDecay(0.001, 1, 0.001)
    model.compile(optimizer=keras.optimizers.RMSprop(schedule, momentum=0.8),
                  loss="sparse_categorical_crossentropy")
    n = 640  # ten steps: enough to move the weights well away from their initial values
    model.fit(real_mnist.train_images[:n, ..., None] / np.float32(255), real_mnist.train_labels[:n].astype(np.int64),
              batch_size=64, epochs=1, verbose=0)
    images = real_mnist.test_images[:256]
    for fmt in FORMATS:
        path = tmp_path / f"cnn.{fmt}"
        model.save(path)
        run = cnnlab.load(import_keras(path, out=tmp_path / fmt).run_dir)
        diffs = max_diffs(run, model, images)
        assert diffs["probabilities"] <= 1e-4 and max(diffs.values()) <= TOL, diffs
        assert run.config.regularizer == {"kind": "l2", "factor": 0.001, "applies_to": "dense"}
        assert run.config.schedule["name"] == "inverse_time" and run.config.optimizer["momentum"] == 0.8


# ---------------------------------------------------------------------------------------------------------
# Import: errors


def _weights_only(folder: Path) -> Path:
    path = folder / "cnn_weights.weights.h5"
    randomize(flat_input()).save_weights(path)
    return path


def _text_file(path: Path) -> Path:
    path.write_text("hello")
    return path


def _zip_without_weights(folder: Path) -> Path:
    path = folder / "incomplete.keras"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("config.json", "{}")
    return path


def _save(model, folder: Path, name: str) -> Path:
    path = folder / name
    model.save(path)
    return path


def _lambda(folder: Path) -> Path:
    model = keras.Sequential([keras.Input((28, 28, 1)), L.Flatten(), L.Lambda(lambda x: x * 2, name="double"),
                              L.Dense(10)])
    return _save(model, folder, "lambda.keras")


def _conv1d(folder: Path) -> Path:
    model = keras.Sequential([keras.Input((28, 28)), L.Conv1D(4, 3, name="conv1d"), L.Flatten(), L.Dense(10)])
    return _save(model, folder, "conv1d.h5")


def _two_branches(folder: Path) -> Path:
    inputs = keras.Input((28, 28, 1), name="images")
    a = L.Conv2D(2, 3, name="left")(inputs)
    b = L.Conv2D(2, 3, name="right")(inputs)
    x = L.Flatten()(L.Add(name="add")([a, b]))
    return _save(keras.Model(inputs, L.Dense(10)(x)), folder, "branches.keras")


def _rgb(folder: Path) -> Path:
    model = keras.Sequential([keras.Input((28, 28, 3)), L.Flatten(), L.Dense(10)])
    return _save(model, folder, "rgb.keras")


@keras.saving.register_keras_serializable(package="Mine")
class Doubler(L.Layer):
    def call(self, x):
        return 2 * x


def _custom(folder: Path) -> Path:
    model = keras.Sequential([keras.Input((28, 28, 1)), Doubler(name="doubler"), L.Flatten(), L.Dense(10)])
    return _save(model, folder, "custom.keras")


def _truncated(source: str, keep: int):
    def make(folder: Path, saved) -> Path:
        _, path = saved["conv_pool_dense", source]
        cut = folder / f"cut.{source}"
        cut.write_bytes(path.read_bytes()[:keep])
        return cut
    return make


ERRORS = [
    ("text file", lambda f, s: _text_file(f / "notes.h5"), "is not a Keras model file"),
    ("missing file", lambda f, s: f / "nope.keras", "does not exist"),
    ("truncated .keras", _truncated("keras", 3000), "damaged or truncated .keras archive"),
    ("truncated .h5", _truncated("h5", 5000), "damaged or truncated HDF5 file"),
    ("zip without weights", lambda f, s: _zip_without_weights(f), "not a Keras .keras archive: it has no"),
    ("weights only", lambda f, s: _weights_only(f), "holds weights only"),
    ("lambda layer", lambda f, s: _lambda(f), "layer 'double' is a Lambda layer"),
    ("conv1d", lambda f, s: _conv1d(f), "layer 'conv1d' of type Conv1D is not supported"),
    ("two branches", lambda f, s: _two_branches(f),
     "non-sequential graph: layer 'right' takes its input from 'images'"),
    ("rgb input", lambda f, s: _rgb(f), "input shape (28, 28, 3) is not supported"),
    ("custom layer", lambda f, s: _custom(f), "layer 'doubler' is a custom object (Mine>Doubler"),
]


@pytest.mark.parametrize("what, make, message", ERRORS, ids=[e[0] for e in ERRORS])
def test_bad_files_are_one_line_errors_naming_the_problem(saved, tmp_path, capsys, what, make, message):
    path = make(tmp_path, saved)
    with pytest.raises(CnnlabError, match=_literal(message)):
        import_keras(path, out=tmp_path / "run")
    assert not (tmp_path / "run").exists()
    code = main(["import-keras", str(path), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and message in err and "Traceback" not in err


def test_out_folder_with_files_is_refused_before_reading(saved, tmp_path):
    _, path = saved["flat_input", "keras"]
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(CnnlabError, match="already holds"):
        import_keras(path, out=out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cnnlab.load(import_keras(path, out=empty).run_dir).model.layer_names == ["flat", "hidden", "scores"]


def _literal(text: str) -> str:
    import re

    return re.escape(text)


# ---------------------------------------------------------------------------------------------------------
# Export and the CLI


def test_cli_import_then_export_checks_with_onnxruntime(saved, tmp_path, capsys, monkeypatch):
    import onnxruntime

    monkeypatch.chdir(tmp_path)
    _, path = saved["batchnorm_same", "h5"]
    assert main(["import-keras", str(path), "--out", "runs/bn"]) == 0
    out = capsys.readouterr().out
    assert "legacy HDF5 .h5" in out and "sha256" in out and "bn_flat" in out and "folded" in out
    assert main(["export", "runs/bn", "--onnx", "bn.onnx"]) == 0
    out = capsys.readouterr().out
    assert "checked with onnxruntime" in out and "on 256 test images: probabilities equal to 1e-05" in out
    session = onnxruntime.InferenceSession("bn.onnx", providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    run = cnnlab.load("runs/bn")
    for batch in (1, 5):  # the batch axis is dynamic
        images = run.data().test_x[:batch].numpy()
        probs = session.run(None, {"images": images})[0]
        assert probs.shape == (batch, 10) and np.allclose(probs.sum(axis=1), 1, atol=1e-6)
        assert np.abs(probs - run.model.probabilities(torch.from_numpy(images)).detach().numpy()).max() <= TOL
    meta = {p.key: p.value for p in __import__("onnx").load("bn.onnx").metadata_props}
    assert json.loads(meta["cnnlab.normalizer"])["mode"] == "unit"


def test_export_report_and_errors(saved, tmp_path):
    _, path = saved["flat_input", "keras"]
    run_dir = import_keras(path, out=tmp_path / "run").run_dir
    report = export_onnx(run_dir, tmp_path / "flat.onnx", check_images=32)
    assert report.images == 32 and report.max_abs_diff <= TOL and report.opset >= 17
    with pytest.raises(CnnlabError, match="not a cnnlab run folder"):
        export_onnx(tmp_path / "nothing", tmp_path / "x.onnx")
    with pytest.raises(CnnlabError, match="is a folder"):
        export_onnx(run_dir, tmp_path)
    with pytest.raises(CnnlabError, match="differ from torch's"):
        export_onnx(run_dir, tmp_path / "strict.onnx", check_images=32, tolerance=-1.0)
    assert not (tmp_path / "strict.onnx").exists()


def test_imported_run_resumes_training(saved, tmp_path):
    _, path = saved["flat_input", "h5"]
    run_dir = import_keras(path, out=tmp_path / "run").run_dir
    (run_dir / store.CONFIG).write_text((run_dir / store.CONFIG).read_text().replace(
        "limit_train = 0", "limit_train = 256"))
    run = cnnlab.resume(run_dir, 1, echo=None)
    assert len(run.history) == 1 and run.history[0]["step"] == 4


# ---------------------------------------------------------------------------------------------------------
# The small extensions: the activation layer type and normalize = "none"


def test_activation_layer_type_builds_and_shows():
    cfg = from_dict({"model": {"layers": [
        {"type": "conv", "filters": 2, "activation": "linear"}, {"type": "activation", "activation": "tanh"},
        {"type": "flatten"}, {"type": "dense", "units": 10, "activation": "softmax"}]}})
    assert cfg.model.layers[1] == {"type": "activation", "name": "activation_1", "activation": "tanh"}
    model = build_model(cfg.model.layers)
    x = torch.randn(3, 1, 28, 28)
    assert torch.equal(model.activation(x, "activation_1"), torch.tanh(model.activation(x, "conv2d_1")))
    assert "Activation" in format_table(model)
    with pytest.raises(CnnlabError, match="needs 'activation'"):
        from_dict({"model": {"layers": [{"type": "activation"}, {"type": "dense", "units": 10}]}})


def test_normalize_none_keeps_raw_pixels():
    norm = fit_normalizer("none", np.zeros((1, 28, 28), np.uint8))
    images = np.arange(2 * 28 * 28, dtype=np.uint64).reshape(2, 28, 28) % 256
    assert torch.equal(norm.apply(images.astype(np.uint8)), torch.from_numpy(images.astype(np.float32))[:, None])
    assert from_dict({"data": {"normalize": "none"}, "model": {"layers": [
        {"type": "flatten"}, {"type": "dense", "units": 10, "activation": "softmax"}]}}).data.normalize == "none"


def test_export_without_the_onnx_extra_names_the_pip_command(saved, tmp_path, monkeypatch, capsys):
    _, path = saved["flat_input", "keras"]
    run_dir = import_keras(path, out=tmp_path / "run").run_dir
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if the extra were not installed
    assert main(["export", str(run_dir), "--onnx", str(tmp_path / "m.onnx")]) == 2
    assert_names_the_extra(capsys.readouterr().err, "ONNX export", "onnxruntime", "onnx")
    assert not (tmp_path / "m.onnx").exists()


def assert_names_the_extra(err: str, feature: str, package: str, extra: str) -> None:
    """The CLI's error for a missing optional package: one line, the package, the pip command."""
    assert err.startswith(f"cnnlab: error: {feature} needs the Python package '{package}', which is not installed")
    assert err.rstrip().endswith(f"install it with: pip install 'cnnlab[{extra}]'") and err.count("\n") == 1


@pytest.mark.parametrize("fmt", FORMATS)
def test_import_without_the_keras_extra_names_the_pip_command(saved, tmp_path, monkeypatch, capsys, fmt):
    _, path = saved["flat_input", fmt]
    monkeypatch.setitem(sys.modules, "h5py", None)  # as if the extra were not installed
    assert main(["import-keras", str(path), "--out", str(tmp_path / "run")]) == 2
    assert_names_the_extra(capsys.readouterr().err, "cnnlab import-keras", "h5py", "keras")
    assert not (tmp_path / "run").exists()
