"""Import a Keras model file (Keras 3 ``.keras`` or legacy HDF5 ``.h5``) as a cnnlab run folder.

The file is read with ``zipfile``, ``json`` and ``h5py`` only: nothing in it is executed or unpickled, and
neither TensorFlow nor Keras is needed. Keras is channels-last and cnnlab (torch) channels-first, so:

- a conv kernel (kh, kw, in, out) becomes torch's (out, in, kh, kw);
- a dense kernel (in, out) becomes (out, in), and the first dense layer after a Flatten of maps has its rows
  permuted from Keras' (H, W, C) flattening order to torch's (C, H, W) order (a BatchNormalization between
  the two gets the same permutation).

Layout of the two formats:

- ``.keras``: a zip with ``config.json`` (the model, its compile config), ``metadata.json`` and
  ``model.weights.h5``, whose ``layers/<snake_case class>[_N]/vars/<i>`` hold each layer's variables in
  creation order (kernel, bias; gamma, beta, moving_mean, moving_variance).
- ``.h5`` (TF2-era ``model.save("cnn.h5")`` and Keras 3's legacy writer): the model config as JSON in the
  root attribute ``model_config``, the compile config in ``training_config``, and the weights under
  ``model_weights/<layer>/.../kernel:0`` (TF2) or ``.../kernel`` (Keras 3).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import os
import re
import shutil
import time
import uuid
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from cnnlab import store
from cnnlab import layers as kinds
from cnnlab.config import Config, from_dict
from cnnlab.data import NORMALIZE_MODES, fit_normalizer, load_mnist
from cnnlab.errors import CnnlabError
from cnnlab.extras import require
from cnnlab.layers import KerasLayer
from cnnlab.layers.keras import check_data_format
from cnnlab.model import CnnModel, build_model
from cnnlab.optim_specs import OPTIMIZER_DEFAULTS
from cnnlab.run import default_out, record_provenance, software, start_run
from cnnlab.schema import check_choice

if TYPE_CHECKING:
    import h5py

# What the Keras model may expect as input: x/255, raw 0..255 or a per-pixel z-score ("global" has no fit to record).
IMPORT_NORMALIZE = tuple(mode for mode in NORMALIZE_MODES if mode != "global")
SUPPORTED_LAYERS = ("InputLayer", *kinds.keras_classes())
FORMAT_LABELS = {"keras": "Keras 3 .keras archive", "h5": "legacy HDF5 .h5"}

_ZIP_MAGIC = b"PK\x03\x04"
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_INPUT_SHAPES = ((28, 28, 1), (28, 28))
_MODEL_CLASSES = ("Sequential", "Functional", "Model")
_OPTIMIZERS = {"rmsprop": "rmsprop", "adam": "adam", "sgd": "sgd", "nadam": "nadam", "adamax": "adamax",
               "adamw": "adamw"}
_SCHEDULES = {"InverseTimeDecay": "inverse_time", "ExponentialDecay": "exponential"}
_DEFAULT_TRAINING = {"optimizer": {"name": "rmsprop"}, "schedule": {"name": "constant", "learning_rate": 0.001}}


@dataclass
class KerasFile:
    """What a Keras model file holds, read without Keras.

    Attributes:
        path: the file.
        format: ``"keras"`` or ``"h5"``.
        sha256: of the file's bytes.
        keras_version: as recorded in the file ("" if not).
        backend: the Keras backend that saved it ("" if not recorded).
        input_shape: one image, channels-last, e.g. (28, 28, 1).
        layers: the layers after the input, in order, with their weights.
        compile_config: the optimizer as ``{"class_name", "config"}`` plus ``"loss"``, or None.
    """

    path: Path
    format: str
    sha256: str
    keras_version: str
    backend: str
    input_shape: tuple[int, ...]
    layers: list[KerasLayer]
    compile_config: dict[str, Any] | None


@dataclass
class ImportReport:
    """What ``import_keras`` did."""

    run_dir: Path
    source: Path
    format: str
    sha256: str
    keras_version: str
    config: Config
    normalize: str
    notes: list[str]
    seconds: float


# ---------------------------------------------------------------------------------------------------------
# Public API


def import_keras(path: str | Path, out: str | Path | None = None, normalize: str = "unit",
                 mnist: Any = None) -> ImportReport:
    """Read a Keras model file and write it as a cnnlab run folder.

    Args:
        path: a Keras 3 ``.keras`` archive or a legacy ``.h5`` file saved with ``model.save``.
        out: the run folder to create (must not hold files); default ``runs/<file stem>`` with a free suffix.
        normalize: what the Keras model expects as input: ``unit`` (x/255), ``none`` (raw 0..255) or
            ``pixel`` (per-pixel standardization, fitted here on the 60,000 canonical training images).
        mnist: the ``cnnlab.data.Mnist`` to fit ``pixel`` on; default ``load_mnist()``.

    Returns:
        An ``ImportReport``; ``cnnlab.load(report.run_dir)`` gives the model.

    Raises:
        CnnlabError: the file is missing, damaged or not a Keras model; it holds something cnnlab does not
            support (a layer type, a non-sequential graph, a custom object, an input other than 28x28x1);
            ``out`` already holds files.
    """
    started = time.perf_counter()
    check_choice("--normalize", normalize, IMPORT_NORMALIZE)
    path = Path(path)
    out = Path(out) if out is not None else default_out(path)
    _check_out(out)
    kfile = read_keras_file(path)
    notes: list[str] = []
    converted = convert_layers(kfile, notes)
    cfg = _make_config(kfile, [spec for spec, _ in converted], normalize, notes)
    try:
        model = build_model(cfg.model.layers, init=cfg.model.init)
        load_keras_weights(model, converted)
    except CnnlabError as exc:
        raise CnnlabError(f"{path.name}: {exc}") from None
    normalizer, fit_record = _normalizer(normalize, mnist)
    _write_run(out, cfg, model, normalizer, _imported(kfile, normalize, fit_record))
    return ImportReport(out, path, kfile.format, kfile.sha256, kfile.keras_version, cfg, normalize, notes,
                        time.perf_counter() - started)


def read_keras_file(path: str | Path) -> KerasFile:
    """Read a ``.keras`` or ``.h5`` model file into plain data, recognizing the format by its first bytes.

    Raises:
        CnnlabError: missing, damaged, truncated, not a Keras model file, or a weights-only file.
    """
    path = Path(path)
    if path.is_dir():
        raise CnnlabError(f"{path} is a folder (a TensorFlow SavedModel?); cnnlab reads a .keras or .h5 file: "
                          "save the model with model.save('model.keras') or model.save('model.h5')")
    if not path.is_file():
        raise CnnlabError(f"{path} does not exist; give a .keras or .h5 file saved with model.save(...)")
    _h5py()  # both formats keep their weights in HDF5: say at once when the reader is missing
    with path.open("rb") as f:
        head = f.read(8)
    if head.startswith(_ZIP_MAGIC):
        return _read_keras_zip(path)
    if head == _HDF5_MAGIC or _h5py().is_hdf5(path):
        return _read_legacy_h5(path)
    raise CnnlabError(f"{path} is not a Keras model file: it is neither a .keras archive (zip) nor an HDF5 "
                      f"file (it starts with {head[:4].hex() or 'nothing'})")


def convert_layers(kfile: KerasFile, notes: list[str] | None = None
                   ) -> list[tuple[dict[str, Any], KerasLayer | None]]:
    """Turn the Keras layers into cnnlab layer specs, each paired with the Keras layer that holds its weights.

    Args:
        kfile: from ``read_keras_file``.
        notes: receives one line per thing that was adapted (a folded activation, ...).

    Raises:
        CnnlabError: an unsupported layer type, activation, padding, data format or input shape.
    """
    notes = notes if notes is not None else []
    where = kfile.path.name
    if kfile.input_shape not in _INPUT_SHAPES:
        raise CnnlabError(f"{where}: input shape {kfile.input_shape} is not supported; cnnlab takes single-channel "
                          "28x28 images: (28, 28, 1) or (28, 28)")
    layers = list(kfile.layers)
    if layers and layers[0].class_name == "Reshape":
        _check_leading_reshape(layers.pop(0), kfile)
    converted: list[tuple[dict[str, Any], KerasLayer | None]] = []
    for layer in layers:
        kind = kinds.by_keras_class(layer.class_name)
        if kind is None:
            raise _unsupported(layer, where)
        check_data_format(layer, where)
        converted.append((kind.from_keras(layer, where), layer))
    return _fold_final_activation(converted, notes)


def load_keras_weights(model: CnnModel, converted: list[tuple[dict[str, Any], KerasLayer | None]]) -> None:
    """Copy the Keras weights into the built model, converting channels-last layouts to torch's.

    Raises:
        CnnlabError: a weight array is missing or its shape does not fit the layer.
    """
    perm: np.ndarray | None = None  # (C*H*W,): for each torch feature, the Keras feature it comes from
    prev = model.input_shape
    for spec, layer in converted:
        name, kind = spec["name"], kinds.get(spec["type"])
        if kind.flattens and len(prev) == 3:
            perm = _flatten_permutation(prev)
        else:
            kind.load_keras(model.layers[name].op, layer.weights, name, perm if len(prev) == 1 else None)
            perm = perm if kind.elementwise else None
        prev = model.output_shapes[name]


# ---------------------------------------------------------------------------------------------------------
# Reading the two formats


def _h5py() -> ModuleType:
    """h5py, which the ``keras`` extra brings (imported on first use, so the core install does without it)."""
    return require("h5py", "keras", "cnnlab import-keras")


def _read_keras_zip(path: Path) -> KerasFile:
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            for member in ("config.json", "model.weights.h5"):
                if member not in names:
                    raise CnnlabError(f"{path} is a zip file but not a Keras .keras archive: it has no {member}")
            config = _json(archive.read("config.json"), f"{path}: config.json")
            meta = _json(archive.read("metadata.json"), f"{path}: metadata.json") if "metadata.json" in names else {}
            weights = archive.read("model.weights.h5")
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
        raise CnnlabError(f"{path} is a damaged or truncated .keras archive ({exc}); save it again") from None
    if not isinstance(config, dict) or config.get("class_name") not in _MODEL_CLASSES:
        raise CnnlabError(f"{path}: config.json does not describe a Keras model "
                          f"(class {config.get('class_name') if isinstance(config, dict) else None!r})")
    entries, input_shape = _layer_entries(config, path.name)
    compile_config = config.get("compile_config") or None
    optimizer = compile_config.get("optimizer") if isinstance(compile_config, dict) else None
    try:
        with _h5py().File(io.BytesIO(weights), "r") as h5:
            layers = _keras_zip_weights(h5, entries, config["class_name"] == "Sequential", path.name)
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise CnnlabError(f"{path}: model.weights.h5 is damaged or truncated ({exc}); save the model again") from None
    return KerasFile(path, "keras", _sha256(path), str(meta.get("keras_version", "")), "", input_shape, layers,
                     _compile(optimizer, compile_config))


def _read_legacy_h5(path: Path) -> KerasFile:
    try:
        with _h5py().File(path, "r") as h5:
            attrs = dict(h5.attrs)
            if "model_config" not in attrs:
                raise CnnlabError(_no_model_config(path, h5))
            config = _json(attrs["model_config"], f"{path}: model_config")
            training = _json(attrs["training_config"], f"{path}: training_config") if "training_config" in attrs \
                else None
            if not isinstance(config, dict) or config.get("class_name") not in _MODEL_CLASSES:
                raise CnnlabError(f"{path}: model_config does not describe a Keras model")
            entries, input_shape = _layer_entries(config, path.name)
            if "model_weights" not in h5:
                raise CnnlabError(f"{path} holds a model config but no model_weights; save it with model.save()")
            layers = [_legacy_layer(h5["model_weights"], entry, path.name) for entry in entries]
    except CnnlabError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise CnnlabError(f"{path} is a damaged or truncated HDF5 file ({exc}); save the model again") from None
    optimizer = training.get("optimizer_config") if isinstance(training, dict) else None
    return KerasFile(path, "h5", _sha256(path), _text(attrs.get("keras_version", "")),
                     _text(attrs.get("backend", "")), input_shape, layers, _compile(optimizer, training))


def _no_model_config(path: Path, h5: h5py.File) -> str:
    if "layer_names" in h5.attrs or "layers" in h5 or "model_weights" in h5:
        return (f"{path} holds weights only (written by save_weights), not a model; cnnlab needs the whole "
                "model: model.save('cnn.h5') or model.save('cnn.keras')")
    return f"{path} is an HDF5 file but not a Keras model (it has no model_config attribute)"


def _layer_entries(config: dict[str, Any], where: str) -> tuple[list[dict[str, Any]], tuple[int, ...]]:
    """Return the layers after the input, checked to form one chain, and the input shape of one image."""
    inner = config.get("config")
    entries = inner if isinstance(inner, list) else (inner or {}).get("layers")
    if not isinstance(entries, list) or not entries:
        raise CnnlabError(f"{where}: the model config lists no layers")
    for entry in entries:
        if not isinstance(entry, dict) or "class_name" not in entry:
            raise CnnlabError(f"{where}: a layer entry of the model config is not a table with a class_name")
        _check_not_custom(entry, where)
    if config["class_name"] != "Sequential":
        _check_chain(inner, entries, where)
    shape = _input_shape(config, entries, where)
    return [e for e in entries if e["class_name"] != "InputLayer"], shape


def _check_not_custom(entry: dict[str, Any], where: str) -> None:
    cls, module = entry["class_name"], entry.get("module")
    registered = entry.get("registered_name")
    if cls in _MODEL_CLASSES:
        name = entry.get("config", {}).get("name", cls)
        raise CnnlabError(f"{where}: nested model {name!r} ({cls}) is not supported; save a flat model")
    custom = (module is not None and not str(module).startswith("keras")) or (registered not in (None, cls))
    if custom:
        raise CnnlabError(f"{where}: layer {_entry_name(entry)!r} is a custom object "
                          f"({registered or cls}, module {module}); cnnlab only reads built-in Keras layers and "
                          "never runs code from a model file")


def _check_chain(inner: dict[str, Any], entries: list[dict[str, Any]], where: str) -> None:
    """A functional model is accepted only when it is one chain: input -> each layer in order -> output."""
    inputs = _tensor_names(inner.get("input_layers"))
    outputs = _tensor_names(inner.get("output_layers"))
    if len(inputs) != 1 or len(outputs) != 1:
        raise CnnlabError(f"{where}: the model has {len(inputs)} inputs and {len(outputs)} outputs; cnnlab reads "
                          "sequential models with one input and one output")
    previous = None
    for entry in entries:
        name = _entry_name(entry)
        nodes = entry.get("inbound_nodes") or []
        if len(nodes) > 1:
            raise CnnlabError(f"{where}: layer {name!r} is called {len(nodes)} times (a shared layer); "
                              "cnnlab reads sequential models only")
        sources = _tensor_names(nodes)
        if previous is not None and sources != [previous]:
            got = ", ".join(repr(s) for s in sources) or "nothing"
            raise CnnlabError(f"{where}: non-sequential graph: layer {name!r} takes its input from {got}, not only "
                              f"from the layer before it ({previous!r}); cnnlab reads sequential models only")
        previous = name
    if outputs != [previous]:
        raise CnnlabError(f"{where}: non-sequential graph: the output is {outputs[0]!r}, not the last layer "
                          f"{previous!r}; cnnlab reads sequential models only")


def _tensor_names(node: Any) -> list[str]:
    """Layer names referenced by inbound nodes or input/output specs, in either Keras 3's or Keras 2's form."""
    if isinstance(node, dict):
        history = node.get("config", {}).get("keras_history") if node.get("class_name") == "__keras_tensor__" \
            else None
        if history:
            return [history[0]]
        return [n for value in node.values() for n in _tensor_names(value)]
    if isinstance(node, list):
        if len(node) >= 3 and isinstance(node[0], str) and isinstance(node[1], int):
            return [node[0]]  # Keras 2: [layer name, node index, tensor index, kwargs]
        return [n for item in node for n in _tensor_names(item)]
    return []


def _input_shape(config: dict[str, Any], entries: list[dict[str, Any]], where: str) -> tuple[int, ...]:
    first = entries[0].get("config", {})
    inner = config.get("config") if isinstance(config.get("config"), dict) else {}
    for shape in (first.get("batch_shape"), first.get("batch_input_shape"), inner.get("build_input_shape")):
        if isinstance(shape, list) and len(shape) >= 2:
            if any(not isinstance(s, int) for s in shape[1:]):
                raise CnnlabError(f"{where}: input shape {tuple(shape[1:])} has unknown sizes; cnnlab takes "
                                  "single-channel 28x28 images: (28, 28, 1)")
            return tuple(shape[1:])
    raise CnnlabError(f"{where}: the model config does not give the input shape; build the model with "
                      "keras.Input((28, 28, 1)) before saving it")


def _keras_zip_weights(h5: h5py.File, entries: list[dict[str, Any]], sequential: bool,
                       where: str) -> list[KerasLayer]:
    """Find each layer's ``vars`` group: by its ``name`` attribute where Keras wrote one, else by the path
    Keras derives from the class names (``conv2d``, ``conv2d_1``, ...; a Sequential's input layer has none)."""
    groups = h5["layers"] if "layers" in h5 else {}
    by_name = {_text(groups[key]["vars"].attrs["name"]): key for key in groups
               if "vars" in groups[key] and "name" in groups[key]["vars"].attrs}
    counted = _class_paths(entries if sequential else [{"class_name": "InputLayer"}, *entries])
    layers = []
    for i, entry in enumerate(entries):
        layer = _keras_layer(entry)
        key = by_name.get(layer.name, counted[i if sequential else i + 1])
        names = _weight_names(layer)
        if not names:
            layers.append(layer)
            continue
        if key not in groups or "vars" not in groups[key]:
            raise CnnlabError(f"{where}: model.weights.h5 has no weights for layer {layer.name!r}")
        found = groups[key]["vars"]
        if len(found) != len(names):
            raise CnnlabError(f"{where}: layer {layer.name!r} has {len(found)} weight arrays in the file, expected "
                              f"{len(names)} ({', '.join(names)})")
        layer.weights = {n: np.asarray(found[str(j)][()]) for j, n in enumerate(names)}
        layers.append(layer)
    return layers


def _class_paths(entries: list[dict[str, Any]]) -> list[str]:
    used: dict[str, int] = {}
    paths = []
    for entry in entries:
        base = _snake_case(entry["class_name"])
        used[base] = used.get(base, -1) + 1
        paths.append(base if used[base] == 0 else f"{base}_{used[base]}")
    return paths


def _snake_case(name: str) -> str:
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _legacy_layer(weights_root: h5py.Group, entry: dict[str, Any], where: str) -> KerasLayer:
    layer = _keras_layer(entry)
    wanted = _weight_names(layer)
    if not wanted:
        return layer
    if layer.name not in weights_root:
        raise CnnlabError(f"{where}: model_weights has no group for layer {layer.name!r}")
    found: dict[str, np.ndarray] = {}
    dataset = _h5py().Dataset

    def collect(name: str, obj: Any) -> None:
        if isinstance(obj, dataset):
            found[name.rsplit("/", 1)[-1].split(":")[0]] = np.asarray(obj[()])  # kernel:0 (TF2) or kernel

    weights_root[layer.name].visititems(collect)
    missing = [n for n in wanted if n not in found]
    if missing:
        raise CnnlabError(f"{where}: layer {layer.name!r} lacks {', '.join(missing)} in model_weights")
    layer.weights = {n: found[n] for n in wanted}
    return layer


def _keras_layer(entry: dict[str, Any]) -> KerasLayer:
    return KerasLayer(entry["class_name"], _entry_name(entry), dict(entry.get("config") or {}))


def _entry_name(entry: dict[str, Any]) -> str:
    return str(entry.get("name") or (entry.get("config") or {}).get("name") or entry["class_name"])


def _weight_names(layer: KerasLayer) -> list[str]:
    """The layer's variables in the order Keras creates (and numbers) them."""
    kind = kinds.by_keras_class(layer.class_name)
    return kind.keras_weight_names(layer.config) if kind is not None else []


def _compile(optimizer: Any, compile_config: Any) -> dict[str, Any] | None:
    if isinstance(optimizer, str):
        optimizer = {"class_name": optimizer, "config": {}}
    if not isinstance(optimizer, dict):
        return None
    loss = compile_config.get("loss") if isinstance(compile_config, dict) else None
    return {"class_name": str(optimizer.get("class_name", "")), "config": optimizer.get("config") or {},
            "loss": loss}


# ---------------------------------------------------------------------------------------------------------
# Layers (each kind converts itself: ``cnnlab.layers``)


def _unsupported(layer: KerasLayer, where: str) -> CnnlabError:
    if layer.class_name == "Lambda":
        return CnnlabError(f"{where}: layer {layer.name!r} is a Lambda layer, which holds Python code; cnnlab "
                           "never runs code from a model file")
    return CnnlabError(f"{where}: layer {layer.name!r} of type {layer.class_name} is not supported; supported: "
                       f"{', '.join(SUPPORTED_LAYERS)}")


def _check_leading_reshape(layer: KerasLayer, kfile: KerasFile) -> None:
    target = tuple(layer.config.get("target_shape") or ())
    if kfile.input_shape != (28, 28) or target != (28, 28, 1):
        raise CnnlabError(f"{kfile.path.name}: layer {layer.name!r} reshapes {kfile.input_shape} to {target}; "
                          "cnnlab accepts a Reshape only from (28, 28) to (28, 28, 1) right after the input")


def _fold_final_activation(converted: list[tuple[dict[str, Any], KerasLayer | None]], notes: list[str]
                           ) -> list[tuple[dict[str, Any], KerasLayer | None]]:
    """``Dense(10)`` + ``Activation("softmax")`` becomes ``Dense(10, softmax)``: cnnlab ends in a dense layer."""
    if len(converted) < 2:
        return converted
    (dense, dense_layer), (act, _) = converted[-2], converted[-1]
    if act["type"] == "activation" and dense["type"] == "dense" and dense["activation"] == "linear":
        dense = {**dense, "activation": act["activation"]}
        notes.append(f"the final Activation layer {act['name']!r} ({act['activation']}) is folded into the dense "
                     f"layer {dense['name']!r}: a cnnlab model ends with a dense layer")
        return [*converted[:-2], (dense, dense_layer)]
    return converted


# ---------------------------------------------------------------------------------------------------------
# Weights


def _flatten_permutation(shape: tuple[int, ...]) -> np.ndarray:
    """For maps (C, H, W): ``perm[torch_index] = keras_index`` of the same value in the two flattenings."""
    c, h, w = shape
    return np.arange(c * h * w).reshape(h, w, c).transpose(2, 0, 1).ravel()


# ---------------------------------------------------------------------------------------------------------
# Config, normalizer, provenance and the run folder


def _make_config(kfile: KerasFile, layers: list[dict[str, Any]], normalize: str, notes: list[str]) -> Config:
    raw = {"data": {"normalize": normalize, "split": "standard", "validation": 0},
           "model": {"init": "keras", "layers": layers}}
    training = _training_sections(kfile.compile_config, notes)
    training["regularizer"] = _regularizer(kfile.layers, notes)
    try:
        return from_dict({**raw, **training})
    except CnnlabError as exc:
        if not str(exc).startswith(("optimizer", "schedule", "regularizer")):
            raise CnnlabError(f"{kfile.path.name}: {exc}") from None
        notes.append(f"the compile config does not map to cnnlab ({exc}); the config uses rmsprop at 0.001")
    try:
        return from_dict({**raw, **_DEFAULT_TRAINING, "regularizer": training["regularizer"]})
    except CnnlabError as exc:
        raise CnnlabError(f"{kfile.path.name}: {exc}") from None


def _training_sections(compile_config: dict[str, Any] | None, notes: list[str]) -> dict[str, Any]:
    """Map the Keras optimizer and its learning-rate schedule to cnnlab's ``optimizer`` and ``schedule``."""
    if not compile_config:
        notes.append("the file has no compile config; the config uses rmsprop at a constant 0.001")
        return dict(_DEFAULT_TRAINING)
    cls, cfg = compile_config["class_name"], compile_config["config"]
    name = _OPTIMIZERS.get(cls.lower())
    if name is None:
        notes.append(f"optimizer {cls} has no cnnlab equivalent; the config uses rmsprop at a constant 0.001")
        return dict(_DEFAULT_TRAINING)
    keys = [k for k in OPTIMIZER_DEFAULTS[name] if k not in ("learning_rate", "flavour")]
    optimizer = {"name": name, **{k: _round(cfg[k]) for k in keys if cfg.get(k) is not None}}
    if cfg.get("weight_decay") and "weight_decay" not in keys:
        notes.append(f"the optimizer's weight_decay {cfg['weight_decay']} is not carried over")
    return {"optimizer": optimizer, "schedule": _schedule(cfg, notes)}


def _schedule(cfg: dict[str, Any], notes: list[str]) -> dict[str, Any]:
    rate = cfg.get("learning_rate", cfg.get("lr", 0.001))
    if isinstance(rate, dict):
        cls, params = rate.get("class_name"), rate.get("config") or {}
        if cls not in _SCHEDULES:
            notes.append(f"learning-rate schedule {cls} has no cnnlab equivalent; the config uses a constant 0.001")
            return {"name": "constant", "learning_rate": 0.001}
        return {"name": _SCHEDULES[cls], "initial": _round(params["initial_learning_rate"]),
                "decay_steps": _round(params["decay_steps"]), "decay_rate": _round(params["decay_rate"]),
                "staircase": bool(params.get("staircase", False))}
    if cfg.get("decay"):  # Keras 2's optimizer decay: lr / (1 + decay * step)
        return {"name": "inverse_time", "initial": _round(rate), "decay_steps": 1, "decay_rate": _round(cfg["decay"])}
    return {"name": "constant", "learning_rate": _round(rate)}


def _regularizer(layers: list[KerasLayer], notes: list[str]) -> dict[str, Any]:
    """One kernel regularizer shared by the dense layers, the conv layers or both; anything else is noted."""
    found = {kind: [_kernel_regularizer(layer) for layer in layers if layer.class_name == cls]
             for kind, cls in (("dense", "Dense"), ("conv", "Conv2D"))}
    distinct = {json.dumps(r, sort_keys=True) for regs in found.values() for r in regs if r is not None}
    if not distinct:
        return {"kind": "none"}
    spec = json.loads(sorted(distinct)[0])
    if spec["kind"] not in ("l1", "l2", "l1_l2"):
        notes.append(f"kernel regularizer {spec['kind']} has no cnnlab equivalent; none is carried over")
        return {"kind": "none"}
    covers = {kind: bool(regs) and all(r == spec for r in regs) for kind, regs in found.items()}
    untouched = {kind: all(r is None for r in regs) for kind, regs in found.items()}
    if len(distinct) > 1 or not all(covers[k] or untouched[k] for k in found):
        notes.append("the kernel regularizers differ between layers; none is carried over")
        return {"kind": "none"}
    applies_to = "all" if all(covers.values()) else next(k for k, v in covers.items() if v)
    return {**spec, "applies_to": applies_to}


def _kernel_regularizer(layer: KerasLayer) -> dict[str, Any] | None:
    reg = layer.config.get("kernel_regularizer")
    if not isinstance(reg, dict):
        return None
    cls, cfg = str(reg.get("class_name", "")), reg.get("config") or {}
    if cls.lower() not in ("l1", "l2", "l1l2"):
        return {"kind": cls}
    l1, l2 = _round(cfg.get("l1", 0.0)), _round(cfg.get("l2", 0.0))
    if l1 and l2:
        return {"kind": "l1_l2", "l1": l1, "l2": l2}
    return {"kind": "l1", "factor": l1} if l1 else {"kind": "l2", "factor": l2}


def _round(value: Any) -> Any:
    # Keras stores rates as float32: 0.0010000000474974513 reads better as the 0.001 the user typed.
    return float(f"{value:.7g}") if isinstance(value, float) else value


def _normalizer(mode: str, mnist: Any) -> tuple[Any, dict[str, Any] | None]:
    if mode != "pixel":
        return fit_normalizer(mode, np.zeros((1, 28, 28), np.uint8)), None
    mnist = mnist if mnist is not None else load_mnist()
    # The same images a standard-split, validation-0 run fits on, so Run.data() reproduces this normalizer.
    record = {"images": f"the {len(mnist.train_images)} canonical MNIST training images", "data_origin": mnist.origin,
              "data_md5": dict(mnist.md5)}
    return fit_normalizer("pixel", mnist.train_images), record


def _imported(kfile: KerasFile, normalize: str, fit_record: dict[str, Any] | None) -> dict[str, Any]:
    """The import's provenance record: the file, how it was read, and the software that read it."""
    return {"source": str(kfile.path.resolve()), "file": kfile.path.name, "sha256": kfile.sha256,
            "bytes": kfile.path.stat().st_size, "format": FORMAT_LABELS[kfile.format],
            "keras_version": kfile.keras_version, "keras_backend": kfile.backend, "normalize": normalize,
            "normalizer_fit": fit_record, **software(), "h5py": _h5py().__version__,
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}


def _check_out(out: Path) -> None:
    if out.exists():
        store.new_run_dir(out)  # raises for a file or a folder that holds files; an empty folder is fine


def _write_run(out: Path, cfg: Config, model: CnnModel, normalizer: Any, imported: dict[str, Any]) -> None:
    """Write the whole run folder beside ``out`` (as ``cnnlab train`` starts one, with an empty history and the
    import's provenance) and rename it into place: no half-written run on failure."""
    _check_out(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.import-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        start_run(tmp, cfg, model, normalizer)
        record_provenance(tmp, imported=imported)
        if out.is_dir():
            out.rmdir()
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


# ---------------------------------------------------------------------------------------------------------
# Small helpers


def _json(raw: Any, where: str) -> Any:
    try:
        return json.loads(_text(raw))
    except (ValueError, UnicodeDecodeError) as exc:
        raise CnnlabError(f"{where} is not valid JSON ({exc}); the file is damaged") from None


def _text(value: Any) -> str:
    if isinstance(value, np.ndarray) and value.shape == ():
        value = value.item()
    return value.decode("utf-8") if isinstance(value, (bytes, np.bytes_)) else str(value)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
