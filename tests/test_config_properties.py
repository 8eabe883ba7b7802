"""Property tests of the config: any TOML document, any ``--set`` override gives a valid Config or one line.

The contract: ``from_toml``, ``load_config(path=...)`` and ``load_config(overrides=...)`` return a ``Config``
that round-trips through its TOML and builds its model (or refuses with a ``CnnlabError`` there too), or raise a
``CnnlabError`` whose message is one line. Never another exception.
"""

from __future__ import annotations

import math

import pytest
import tomli_w
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from cnnlab.config import from_dict, from_toml, load_config, preset_dict  # noqa: E402
from cnnlab.errors import CnnlabError  # noqa: E402
from cnnlab.model import build_model  # noqa: E402

SETTINGS = settings(max_examples=150, deadline=None, derandomize=True,  # the same examples every run: CI stays stable
                    suppress_health_check=[HealthCheck.too_slow])

# The schema's own keys, so that many examples reach deep into validation instead of stopping at "unknown key".
_BASE = preset_dict("tiny")
_SECTION_KEYS = {section: sorted(value) for section, value in _BASE.items() if isinstance(value, dict)}
_KEYS = sorted({f"{s}.{k}" for s, keys in _SECTION_KEYS.items() for k in keys if k != "layers"}
               | {"train.early_stopping.patience", "train.early_stopping.min_delta",
                  "train.early_stopping.restore_best", "optimizer.name", "optimizer.momentum", "optimizer.flavour",
                  "schedule.name", "schedule.initial", "regularizer.kind", "regularizer.factor", "model.init",
                  "extends"})
_LAYER_KEYS = ["type", "name", "filters", "kernel", "stride", "padding", "activation", "units", "rate", "size",
               "momentum", "epsilon", "use_bias"]
_LAYER_REFS = ["0", "1", "4", "6", "99", "Conv2D_1", "Dense_2", "Flatten_1", "nope", "-1"]

numbers = st.one_of(
    st.integers(), st.integers(-3, 70), st.sampled_from([0, 1, -1, 2**63 - 1, -(2**63), 10**30]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([math.nan, math.inf, -math.inf, 1e308, -0.0, 5e-324]))
words = st.one_of(st.text(max_size=12), st.sampled_from(
    ["relu", "softmax", "conv", "dense", "maxpool", "flatten", "dropout", "batchnorm", "same", "valid", "adam",
     "rmsprop", "sgd", "constant", "cosine", "one_cycle", "l2", "none", "pixel", "reshuffle", "best", "bf16",
     "seed", "tiny", "fast", "ünïcødé", "名前", "", " ", "\x00"]))
scalars = st.one_of(numbers, words, st.booleans())
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.one_of(st.sampled_from(_LAYER_KEYS), st.text(max_size=6)),
                                                 inner, max_size=3)), max_leaves=8)


@st.composite
def mutated_configs(draw) -> dict:
    """The tiny preset with a few keys set to random values, removed, or added (deep nesting included)."""
    raw = preset_dict("tiny")
    for _ in range(draw(st.integers(1, 4))):
        how = draw(st.sampled_from(["set", "layer", "drop", "table", "junk"]))
        if how == "set":
            section, _, key = draw(st.sampled_from(_KEYS)).rpartition(".")
            node = raw
            for part in section.split(".") if section else []:
                node = node.setdefault(part, {}) if isinstance(node, dict) else {}
            if isinstance(node, dict):
                node[key] = draw(values)
        elif how == "layer":
            model = raw.get("model")
            layers = model.get("layers") if isinstance(model, dict) else None
            if not isinstance(layers, list):
                continue
            i = draw(st.integers(0, len(layers)))
            if i == len(layers):
                layers.append(draw(values))
            elif isinstance(layers[i], dict):
                layers[i] = {**layers[i], draw(st.sampled_from(_LAYER_KEYS)): draw(values)}
        elif how == "drop":
            section = draw(st.sampled_from(sorted(raw)))
            if isinstance(raw[section], dict) and raw[section]:
                raw[section].pop(draw(st.sampled_from(sorted(raw[section]))))
            else:
                raw.pop(section)
        elif how == "table":
            raw[draw(st.sampled_from(sorted(raw)))] = draw(st.one_of(st.just({}), values))
        else:
            raw[draw(st.text(min_size=1, max_size=8))] = draw(values)
    return raw


def overrides():
    keys = st.one_of(st.sampled_from(_KEYS),
                     st.builds(lambda ref, key: f"model.layers.{ref}.{key}", st.sampled_from(_LAYER_REFS),
                               st.sampled_from(_LAYER_KEYS)),
                     st.builds(".".join, st.lists(st.text(max_size=5), min_size=1, max_size=6)))
    texts = st.one_of(st.sampled_from(["3", "-1", "0", "1e400", "-1e400", "nan", "inf", "-inf", "true", '"x"', "{}",
                                       "[]", '{name="adam"}', '{name="constant", learning_rate=nan}', "[1, [2]]",
                                       "{a={b={c={d={}}}}}", "9" * 40, "0.0000001", '"relu"', "", "=", "ü"]),
                      st.text(max_size=15))
    return st.lists(st.one_of(st.builds(lambda k, v: f"{k}={v}", keys, texts), st.text(max_size=20)),
                    min_size=1, max_size=4)


def check_outcome(make) -> None:
    """``make()`` gives a valid Config (round trip, model builds or refuses in one line) or one CnnlabError line."""
    try:
        cfg = make()
    except CnnlabError as exc:
        message = str(exc)
        assert message and "\n" not in message and "\r" not in message, repr(message)
        return
    again = from_toml(cfg.to_toml())
    assert again.to_dict() == cfg.to_dict()
    try:
        model = build_model(cfg.model.layers, init=cfg.model.init)
    except CnnlabError as exc:
        assert "\n" not in str(exc)
        return
    with torch.no_grad():  # the layer kinds' torch-free shapes are what the built layers really give
        _, got = model.eval().outputs(torch.zeros(1, *model.input_shape), model.layer_names)
    assert {name: tuple(x.shape[1:]) for name, x in got.items()} == model.output_shapes


@SETTINGS
@given(mutated_configs())
def test_any_toml_document_gives_a_config_or_one_line(raw):
    try:
        text = tomli_w.dumps(raw)
    except (TypeError, ValueError):  # not expressible in TOML (e.g. a NUL in a key): nothing a user can write
        return
    check_outcome(lambda: from_toml(text))


@SETTINGS
@given(st.text(max_size=80))
def test_any_text_as_toml_gives_a_config_or_one_line(text):
    check_outcome(lambda: from_toml(text))


@SETTINGS
@given(overrides(), st.sampled_from(["tiny", "seed", "fast"]))
def test_any_set_override_gives_a_config_or_one_line(items, preset):
    check_outcome(lambda: load_config(preset=preset, overrides=items))


@SETTINGS
@given(mutated_configs())
def test_any_dict_from_python_gives_a_config_or_one_line(raw):
    check_outcome(lambda: from_dict(raw))


def test_a_config_file_with_a_broken_encoding_is_one_line(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_bytes(b"[train]\nepochs = \xff\xfe\n")
    check_outcome(lambda: load_config(path=path))
    with pytest.raises(CnnlabError):
        load_config(path=path)
