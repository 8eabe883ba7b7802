"""Config: presets, TOML round trip, overrides, and the one-line errors for each kind of mistake."""

import pytest

from cnnlab.config import Config, from_dict, from_toml, load_config, preset_dict, preset_names
from cnnlab.errors import CnnlabError


def test_presets_exist():
    assert {"seed", "tiny"} <= set(preset_names())


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_round_trips_through_toml(name):
    cfg = load_config(preset=name)
    again = from_toml(cfg.to_toml())
    assert again == cfg
    assert again.to_toml() == cfg.to_toml()


def test_seed_preset_holds_the_articles_values():
    cfg = load_config(preset="seed")
    assert cfg.optimizer == {"name": "rmsprop", "rho": 0.9, "momentum": 0.8, "epsilon": 1e-7, "centered": False,
                             "flavour": "keras"}
    assert cfg.schedule["name"] == "inverse_time"
    assert (cfg.schedule["initial"], cfg.schedule["decay_steps"], cfg.schedule["decay_rate"]) == (0.001, 1, 0.001)
    assert cfg.regularizer == {"kind": "l2", "factor": 0.001, "applies_to": "dense"}
    assert (cfg.train.epochs, cfg.train.batch_size) == (80, 64)
    assert (cfg.data.normalize, cfg.data.split, cfg.data.validation) == ("pixel", "reshuffle", 0)
    assert [lay["name"] for lay in cfg.model.layers] == [
        "Conv2D_1", "Max_Pool_1", "Conv2D_2", "Max_Pool_2", "Conv2D_3", "Flatten_1", "Dense_1", "Dense_2"]


def test_override_is_typed_by_schema():
    cfg = load_config(preset="seed", overrides=["optimizer.momentum=0.9", "train.epochs=3",
                                                "model.layers.Conv2D_1.filters=16", "model.layers.6.units=50",
                                                "data.normalize=unit"])
    assert cfg.optimizer["momentum"] == 0.9
    assert cfg.train.epochs == 3
    assert cfg.model.layers[0]["filters"] == 16
    assert cfg.model.layers[6]["units"] == 50
    assert cfg.data.normalize == "unit"


def test_override_can_replace_a_whole_section():
    cfg = load_config(preset="seed", overrides=['optimizer={name="adam"}'])
    assert cfg.optimizer["name"] == "adam"
    assert cfg.optimizer["beta_1"] == 0.9


def test_int_is_accepted_where_a_float_is_expected():
    cfg = load_config(preset="seed", overrides=["regularizer.factor=1"])
    assert cfg.regularizer["factor"] == 1.0 and isinstance(cfg.regularizer["factor"], float)


def test_unnamed_layers_get_keras_style_names():
    raw = preset_dict("tiny")
    for layer in raw["model"]["layers"]:
        layer.pop("name")
    raw["model"]["layers"][2]["name"] = "conv2d_1"  # a given name is kept and skipped by the generator
    cfg = from_dict(raw)
    assert [lay["name"] for lay in cfg.model.layers] == [
        "conv2d_2", "max_pooling2d_1", "conv2d_1", "max_pooling2d_2", "flatten_1", "dense_1", "dense_2"]


@pytest.mark.parametrize("override, message", [
    ("optimizer.name=rmsporp", "optimizer.name: 'rmsporp' is not one of rmsprop, nadam, adamax, sgd, adam, adamw "
                                "(did you mean 'rmsprop'?)"),
    ("train.epohcs=3", "train.epohcs: unknown key; valid keys: epochs"),
    ("train.epochs=-1", "train.epochs: -1 is out of range; it must be >= 0"),
    ("train.epochs=2.5", "train.epochs: expected an integer, got float 2.5"),
    ("train.channels_last=1", "train.channels_last: expected true or false"),
    ("data.normalize=pixl", "data.normalize: 'pixl' is not one of pixel, global, unit, none (did you mean 'pixel'?)"),
    ("optimizer.beta_1=0.9", "optimizer.beta_1: not a parameter of rmsprop"),
    ("model.layers.Conv2D_1.filterz=3", "model.layers[0].filterz: not a key of a conv layer"),
    ("model.layers.Conv2D_1.filters=0", "model.layers[0].filters: 0 is out of range; it must be >= 1"),
    ("model.layers.Conv2D_1.activation=softmax", "softmax is allowed on the last layer only"),
    ("model.layers.Conv2D_1.padding=full", "model.layers[0].padding: 'full' is not one of valid, same"),
    ("model.layers.Conv2D_9.filters=3", "no layer named 'Conv2D_9'"),
    ("schedule.decay_steps=0", "schedule"),
    ("model.layers.Dense_2.activation=relu", "the last layer gives class scores"),
])
def test_config_errors_name_the_path_and_what_is_valid(override, message):
    with pytest.raises(CnnlabError) as info:
        load_config(preset="seed", overrides=[override])
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_unknown_preset_suggests_the_closest():
    with pytest.raises(CnnlabError, match="did you mean 'seed'"):
        load_config(preset="sead")


def test_duplicate_layer_names_are_refused():
    raw = preset_dict("tiny")
    raw["model"]["layers"][2]["name"] = "Conv2D_1"
    with pytest.raises(CnnlabError, match="'Conv2D_1' is used twice"):
        from_dict(raw)


def test_missing_file_and_bad_toml(tmp_path):
    with pytest.raises(CnnlabError, match="does not exist"):
        load_config(path=tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nepochs = 3")
    with pytest.raises(CnnlabError, match="not valid TOML"):
        load_config(path=bad)


def test_config_file_with_defaults_only_needs_layers(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('[[model.layers]]\ntype = "flatten"\n[[model.layers]]\ntype = "dense"\nunits = 10\n'
                    'activation = "softmax"\n')
    cfg = load_config(path=path)
    assert isinstance(cfg, Config)
    assert cfg.model.layers[1] == {"type": "dense", "name": "dense_1", "units": 10, "activation": "softmax",
                                   "use_bias": True}
    assert cfg.schedule["name"] == "constant"


def test_one_cycle_length_defaults_to_the_whole_run():
    cfg = load_config(preset="seed", overrides=['schedule={name="one_cycle", max_lr=0.1}', "train.epochs=3",
                                                "train.batch_size=128", "data.validation=10000"])
    assert cfg.schedule["total_steps"] == 3 * 391  # ceil(50000 / 128) = 391
    assert from_toml(cfg.to_toml()) == cfg
    fixed = load_config(preset="seed", overrides=['schedule={name="one_cycle", max_lr=0.1, total_steps=7}'])
    assert fixed.schedule["total_steps"] == 7


def test_changing_epochs_later_keeps_a_filled_in_schedule_length_in_step():
    from cnnlab.run import _with_epochs

    cfg = load_config(preset="seed", overrides=['schedule={name="one_cycle", max_lr=0.1}'])
    assert cfg.schedule["total_steps"] == 80 * 938
    assert _with_epochs(cfg, 3).schedule["total_steps"] == 3 * 938
    fixed = load_config(preset="seed", overrides=['schedule={name="one_cycle", max_lr=0.1, total_steps=5}'])
    assert _with_epochs(fixed, 3).schedule["total_steps"] == 5
    with pytest.raises(CnnlabError, match="train.epochs: -1 is out of range"):
        _with_epochs(cfg, -1)


def test_a_file_can_extend_a_preset(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('extends = "seed"\n[optimizer]\nmomentum = 0.9\n[train]\nepochs = 3\n'
                    '[schedule]\nname = "constant"\nlearning_rate = 0.01\n')
    cfg = load_config(path=path, overrides=["model.layers.Dense_1.units=64"])
    seed = load_config(preset="seed")
    assert cfg.optimizer == {**seed.optimizer, "momentum": 0.9}  # same optimizer: tables merge
    assert cfg.schedule == {"name": "constant", "learning_rate": 0.01}  # another schedule: replaced whole
    assert cfg.train.epochs == 3 and cfg.train.batch_size == 64
    assert cfg.model.layers[6]["units"] == 64 and cfg.model.layers[0] == seed.model.layers[0]
    assert from_toml(cfg.to_toml()) == cfg


def test_fast_preset_is_the_seed_model_with_its_own_recipe():
    fast, seed = load_config(preset="fast"), load_config(preset="seed")
    assert fast.model == seed.model
    assert fast.optimizer["name"] == "adam" and fast.schedule["total_steps"] == 3 * 469
    assert fast.data.split == "standard" and fast.train.precision == "auto"
