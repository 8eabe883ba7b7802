"""The run configuration: one object for the whole run, loaded from TOML or a preset, strict on mistakes.

A config has six sections. ``data``, ``model`` and ``train`` are dataclasses; ``optimizer``, ``schedule`` and
``regularizer`` are plain spec dicts (the same dicts ``cnnlab.get_optimizer`` and friends accept), checked
against the registries in ``cnnlab.optim_specs``; layers against ``cnnlab.layers``. The rules and the wording of
errors are ``cnnlab.schema``'s. Every mistake raises ``CnnlabError`` with the dotted path of the
key and what would be valid.
"""

from __future__ import annotations

import copy
import dataclasses
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import tomli_w

from cnnlab import layers as layer_kinds
from cnnlab.data import DATASET_NAMES, NORMALIZE_MODES, SPLITS
from cnnlab.errors import CnnlabError
from cnnlab.files import write_text
from cnnlab.optim_specs import OPTIMIZERS, REGULARIZERS, SCHEDULES
from cnnlab.schema import Key, Rule, SpecSchema, boolean, choice, expected_table, integer, join, number, \
    parse_toml, resolve_table, show, suggest, text



def _key(default: Any, rule: Rule) -> Any:
    return field(default=default, metadata={"rule": rule})


def _choice(*values: str, default: str) -> Any:
    return _key(default, choice(*values))


def _int(default: int, lo: int | None = None, hi: int | None = None) -> Any:
    return _key(default, integer(lo, hi))


def _float(default: float, lo: float | None = None, hi: float | None = None, hi_open: bool = False) -> Any:
    return _key(default, number(lo, hi, high_open=hi_open))


@dataclass
class DataConfig:
    """Which data set, where it comes from and how it is prepared."""

    dataset: str = _choice(*DATASET_NAMES, default="mnist")  # idx: your own IDX files in source
    classes: list[str] = field(default_factory=list)  # class names; [] = the set's own (idx: classes.txt)
    normalize: str = _choice(*NORMALIZE_MODES, default="pixel")
    split: str = _choice(*SPLITS, default="standard")
    validation: int = _int(0, 0, 59_999)  # training images held out; 0 = validate on the test set
    source: str = _key("", text())  # a folder with the four IDX files; "" = cache, mirrors, then PyPI or Debian's
    limit_train: int = _int(0, 0)  # keep only the first N training images (0 = all)
    limit_test: int = _int(0, 0)


@dataclass
class EarlyStoppingConfig:
    """``[train.early_stopping]``: stop when ``train.monitor`` has not improved for ``patience`` epochs.

    ``patience = 0`` (the default) never stops. An epoch improves on the best so far when the monitored value is
    better by more than ``min_delta`` (lower for a loss, higher for an accuracy). ``restore_best`` puts the best
    epoch's weights back at the end of training where a later epoch was worse (Keras' ``restore_best_weights``).
    """

    patience: int = _int(0, 0)
    min_delta: float = _float(0.0, 0.0)
    restore_best: bool = _key(False, boolean())


@dataclass
class TrainConfig:
    """The training loop."""

    epochs: int = _int(2, 0)
    batch_size: int = _int(64, 1)
    seed: int = _int(0, 0)
    threads: int = _int(0, 0)  # 0 = one per core
    label_smoothing: float = _float(0.0, 0.0, 1.0, hi_open=True)
    checkpoint: str = _choice("last", "best", default="last")
    monitor: str = _choice("val_accuracy", "val_loss", "loss", "accuracy", default="val_accuracy")
    channels_last: bool = _key(True, boolean())
    precision: str = _choice("fp32", "bf16", "auto", default="fp32")  # auto = bf16 where the CPU has it natively
    device: str = _choice("auto", "cpu", "cuda", default="auto")  # auto = CUDA where torch sees a GPU, else CPU
    shift: int = _int(0, 0, 4)  # random shifts of training images by up to this many pixels (0 = off)
    flip: bool = _key(False, boolean())  # mirror half the training images left to right (not for digits)
    log_loss: bool = _key(False, boolean())  # draw the loss curves on a log scale
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)


@dataclass
class ModelConfig:
    """The network: an initialization scheme and a list of named layers (see ``cnnlab.layers``)."""

    init: str = _choice("keras", "torch", default="keras")
    layers: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Config:
    """A whole run: data, model, regularizer, optimizer, schedule, training."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    regularizer: dict[str, Any] = field(default_factory=lambda: {"kind": "none"})
    optimizer: dict[str, Any] = field(default_factory=lambda: {"name": "rmsprop"})
    schedule: dict[str, Any] = field(default_factory=lambda: {"name": "constant"})
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        """Return the config as plain nested dicts and lists (no ``None`` values), ready for TOML."""
        return _drop_none(dataclasses.asdict(self))

    def to_toml(self) -> str:
        """Return the fully resolved config as TOML text that ``from_toml`` reads back to an equal config."""
        return tomli_w.dumps(self.to_dict())

    def save(self, path: str | Path) -> Path:
        """Write the config as TOML to ``path`` atomically."""
        return write_text(path, self.to_toml())


# ---------------------------------------------------------------------------------------------------------
# Loading


def load_config(preset: str | None = None, path: str | Path | None = None,
                overrides: list[str] | None = None) -> Config:
    """Load a config from a preset or a TOML file, apply ``--set`` overrides and validate it.

    Args:
        preset: a built-in preset name (see ``preset_names()``); used when ``path`` is None.
        path: a TOML file.
        overrides: ``"dotted.key=value"`` strings, values typed by the schema.

    Returns:
        The validated, fully resolved ``Config``.
    """
    if preset is not None and path is not None:
        raise CnnlabError("give either a preset or a config file, not both")
    if path is not None:
        raw = _read_toml_file(Path(path))
    else:
        raw = preset_dict(preset or "seed")
    raw = _apply_extends(raw)
    for item in overrides or []:
        apply_override(raw, item)
    return from_dict(raw)


def preset_names() -> list[str]:
    """Return the names of the built-in presets."""
    folder = resources.files("cnnlab") / "presets"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


def preset_dict(name: str) -> dict[str, Any]:
    """Return a built-in preset as a raw (unvalidated) dict."""
    names = preset_names()
    if name not in names:
        raise CnnlabError(f"preset {name!r} does not exist; valid presets: {', '.join(names)}"
                          + suggest(name, names))
    text = (resources.files("cnnlab") / "presets" / f"{name}.toml").read_text()
    return tomllib.loads(text)


_SPEC_KEYS = {"optimizer": "name", "schedule": "name", "regularizer": "kind"}


def _apply_extends(raw: dict[str, Any]) -> dict[str, Any]:
    """Resolve ``extends = "PRESET"``: start from that preset and lay this file's values over it.

    Tables merge key by key; a list (the layers) replaces the preset's; an optimizer, schedule or
    regularizer table that names another optimizer, schedule or kind replaces the preset's whole table.
    """
    if "extends" not in raw:
        return raw
    base_name = raw.pop("extends")
    if not isinstance(base_name, str):
        raise CnnlabError(f"extends: expected a preset name, got {show(base_name)}")
    base = _apply_extends(preset_dict(base_name))
    for section, value in raw.items():
        key = _SPEC_KEYS.get(section)
        same_kind = isinstance(value, dict) and key is not None and value.get(key, base.get(section, {}).get(key)) \
            == base.get(section, {}).get(key)
        if isinstance(value, dict) and isinstance(base.get(section), dict) and (key is None or same_kind):
            base[section] = _merge(base[section], value)
        else:
            base[section] = value
    return base


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def from_toml(text: str) -> Config:
    """Parse and validate config TOML text."""
    return from_dict(parse_toml(text, "config"))


def _read_toml_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CnnlabError(f"config file {path} does not exist; give a TOML file or use --preset")
    try:
        return tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise CnnlabError(f"{path} is not valid TOML: {exc}") from None


def from_dict(raw: dict[str, Any]) -> Config:
    """Validate a raw nested dict and return the resolved ``Config`` (all defaults filled in)."""
    raw = _apply_extends(copy.deepcopy(raw))
    cfg = _build_dataclass(Config, raw, "")
    cfg.model.layers = resolve_layers(cfg.model.layers)
    _fill_run_length(cfg)
    cfg.optimizer = _resolve_spec(OPTIMIZERS, cfg.optimizer)
    cfg.schedule = _resolve_spec(SCHEDULES, cfg.schedule)
    cfg.regularizer = _resolve_spec(REGULARIZERS, cfg.regularizer)
    if "learning_rate" in cfg.optimizer:
        # The rate lives in [schedule]; a second value here could only disagree with it.
        del cfg.optimizer["learning_rate"]
    _check_consistency(cfg)
    return cfg


# Schedules whose length may be left out (or 0): it is then the run's whole length in optimizer steps.
RUN_LENGTH_KEYS = {"one_cycle": "total_steps", "cosine": "decay_steps"}
MNIST_TRAIN_IMAGES = 60_000


def run_steps(cfg: Config) -> int:
    """Return the optimizer steps of the whole run: epochs times mini-batches per epoch."""
    images = min(cfg.data.limit_train or MNIST_TRAIN_IMAGES, MNIST_TRAIN_IMAGES) - cfg.data.validation
    return cfg.train.epochs * -(-max(images, 0) // cfg.train.batch_size)


def _fill_run_length(cfg: Config) -> None:
    name = cfg.schedule.get("name")
    key = RUN_LENGTH_KEYS.get(name) if isinstance(name, str) else None  # a wrong name is refused just after
    if key and not cfg.schedule.get(key):
        cfg.schedule[key] = max(run_steps(cfg), 1)


def _build_dataclass(cls: type, raw: Any, path: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    keys = {name: Key(f.default, f.metadata["rule"]) for name, f in fields.items() if "rule" in f.metadata}
    nested = [name for name in fields if name not in keys]
    values = resolve_table(path, raw, keys, skip=tuple(nested))
    for name in nested:
        if name in raw:
            values[name] = _check_nested(fields[name], raw[name], join(path, name))
    return cls(**values)


def _check_nested(f: dataclasses.Field, value: Any, path: str) -> Any:
    default = f.default_factory()
    if dataclasses.is_dataclass(default):
        return _build_dataclass(type(default), value, path)
    if not isinstance(value, type(default)):
        raise expected_table(path, value, "a list" if isinstance(default, list) else "a table")
    return value


def _resolve_spec(schema: SpecSchema, spec: Any) -> dict[str, Any]:
    """Check a spec table against its registry; fill in every default (TOML has no None: those are left out)."""
    key = schema.name_key
    hint = f" (to switch {key}, replace the section: --set '{schema.section}={{{key}=\"...\"}}')"
    resolved = schema.resolve(spec, hint=hint)
    return {k: v for k, v in resolved.items() if v is not None}


# ---------------------------------------------------------------------------------------------------------
# Layers


def resolve_layers(layers: list[Any]) -> list[dict[str, Any]]:
    """Validate the layer list, fill in defaults and give every layer a unique name.

    Unnamed layers get Keras-style names per type: ``conv2d_1``, ``conv2d_2``, ``max_pooling2d_1``, ...
    """
    if not layers:
        raise CnnlabError("model.layers: the model has no layers; add [[model.layers]] tables")
    resolved = [layer_kinds.resolve(layer, f"model.layers[{i}]") for i, layer in enumerate(layers)]
    given = [layer["name"] for layer in resolved if layer.get("name")]
    dupes = sorted({n for n in given if given.count(n) > 1})
    if dupes:
        raise CnnlabError(f"model.layers: layer name {dupes[0]!r} is used twice; every layer needs a unique name")
    taken = set(given)
    counters: dict[str, int] = {}
    for layer in resolved:
        if layer.get("name"):
            continue
        base = layer_kinds.get(layer["type"]).keras_name
        while True:
            counters[base] = counters.get(base, 0) + 1
            candidate = f"{base}_{counters[base]}"
            if candidate not in taken:
                break
        layer["name"] = candidate
        taken.add(candidate)
    _check_activations(resolved)
    return resolved


def _check_activations(layers: list[dict[str, Any]]) -> None:
    for i, layer in enumerate(layers):
        if layer.get("activation") == "softmax" and i != len(layers) - 1:
            raise CnnlabError(f"model.layers[{i}].activation: softmax is allowed on the last layer only; "
                              "use relu, tanh, sigmoid, elu, gelu or linear here")
    last = layers[-1]
    if last["type"] != "dense":
        raise CnnlabError(f"model.layers[{len(layers) - 1}]: the last layer must be a dense layer with one unit "
                          f"per class, not {last['type']!r}")
    if last["activation"] not in ("softmax", "linear"):
        raise CnnlabError(f"model.layers[{len(layers) - 1}].activation: the last layer gives class scores; "
                          f"use softmax or linear, not {last['activation']!r}")


def _check_consistency(cfg: Config) -> None:
    if cfg.data.limit_train and cfg.data.validation >= cfg.data.limit_train:
        raise CnnlabError(f"data.validation: {cfg.data.validation} held-out images leave none of the "
                          f"{cfg.data.limit_train} training images (data.limit_train); use fewer")


# ---------------------------------------------------------------------------------------------------------
# Overrides


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Apply one ``dotted.key=value`` override to a raw config dict in place.

    The value is read as a TOML value (``3``, ``1e-3``, ``true``, ``"text"``, ``{name="adam"}``); a bare word
    that is not valid TOML is taken as a string. Layers are addressed by name or index:
    ``model.layers.Conv2D_1.filters=16`` or ``model.layers.0.filters=16``.
    """
    if "=" not in item:
        raise CnnlabError(f"--set {item!r}: expected KEY=VALUE, for example optimizer.momentum=0.9")
    key, text = item.split("=", 1)
    parts = [p for p in key.strip().split(".")]
    if not all(parts):
        raise CnnlabError(f"--set {item!r}: {key!r} is not a dotted key such as train.epochs")
    value = _parse_value(text.strip())
    target = raw
    for depth, part in enumerate(parts[:-1]):
        target = _descend(target, part, ".".join(parts[: depth + 1]))
    last = parts[-1]
    if isinstance(target, list):
        target[_layer_index(target, last, key)] = value
    else:
        target[last] = value


def _descend(node: Any, part: str, path: str) -> Any:
    if isinstance(node, list):
        return node[_layer_index(node, part, path)]
    if not isinstance(node, dict):
        raise CnnlabError(f"--set {path}: {path.rsplit('.', 1)[0]} is a value, not a table")
    if part not in node:
        node[part] = [] if path == "model.layers" else {}
    return node[part]


def _layer_index(layers: list[Any], part: str, path: str) -> int:
    if part.isdigit():
        if int(part) >= len(layers):
            raise CnnlabError(f"--set {path}: index {part} is out of range; the list has {len(layers)} entries")
        return int(part)
    names = [lay.get("name", "") if isinstance(lay, dict) else "" for lay in layers]
    if part not in names:
        valid = [n for n in names if n]
        raise CnnlabError(f"--set {path}: no layer named {part!r}; named layers: {', '.join(valid)} "
                          "(or use an index)" + suggest(part, valid))
    return names.index(part)


def _parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


# ---------------------------------------------------------------------------------------------------------
# Small helpers


def _drop_none(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _drop_none(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, list):
        return [_drop_none(v) for v in obj]
    return obj
