"""cnnlab export --tensorboard: event files read back with TensorBoard's own reader (EventAccumulator)."""

import json

import pytest

pytest.importorskip("tensorboard")
pytest.importorskip("optuna")

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402
from tensorboard.plugins.hparams import plugin_data_pb2  # noqa: E402

from cnnlab import store  # noqa: E402
from cnnlab.cli import main  # noqa: E402

SWEEP = """extends = "tiny"

[data]
limit_train = 256
limit_test = 128

[train]
epochs = 2

[sweep]
trials = 1
pruner = "none"

[sweep.space]
"optimizer.momentum" = { low = 0.0, high = 0.9 }
"model.layers.Dense_1.units" = { choices = [8, 16] }
"""


def read(folder):
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_runs_and_a_sweep_trial_read_back(tmp_path, real_mnist, monkeypatch, capsys):
    from cnnlab.run import train
    from cnnlab.sweep import run_sweep

    monkeypatch.chdir(tmp_path)
    train("tiny", out=tmp_path / "runs" / "plain", epochs=2, overrides=["train.threads=1"], echo=None,
          progress=False)
    (tmp_path / "sweep.toml").write_text(SWEEP)
    run_sweep(tmp_path / "sweep.toml", out=tmp_path / "sw", echo=None)
    assert main(["export", "runs/plain", "sw", "--tensorboard", "tb"]) == 0
    assert "view them with: tensorboard --logdir tb" in capsys.readouterr().out

    plain = read(tmp_path / "tb" / "plain")
    history = json.loads((tmp_path / "runs" / "plain" / store.HISTORY_JSON).read_text())
    assert set(plain.Tags()["scalars"]) == {"loss", "accuracy", "val_loss", "val_accuracy", "lr"}
    for key in ("loss", "val_accuracy", "lr"):
        events = plain.Scalars(key)
        assert [e.step for e in events] == [1, 2]
        assert [e.value for e in events] == pytest.approx([h[key] for h in history], rel=1e-6)
    text = plain.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert 'name = "rmsprop"' in text and "momentum = 0.5" in text
    assert "hparams" not in plain.PluginTagToContent("hparams") if "hparams" in plain.Tags() else True

    trial = read(tmp_path / "tb" / "trial-0000")
    record = json.loads((tmp_path / "sw" / "trial-0000" / "trial.json").read_text())
    content = trial.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hp = start.session_start_info.hparams
    assert hp["optimizer.momentum"].number_value == pytest.approx(record["params"]["optimizer.momentum"])
    assert hp["model.layers.Dense_1.units"].number_value == record["params"]["model.layers.Dense_1.units"]
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert [m.name.tag for m in experiment.metric_infos] == ["hparam/val_accuracy"]
    assert trial.Scalars("hparam/val_accuracy")[0].value == pytest.approx(record["value"])

    # Exporting into the same folder again would double the events: refused, nothing written.
    before = sorted(p.name for p in (tmp_path / "tb" / "plain").iterdir())
    assert main(["export", "runs/plain", "--tensorboard", "tb"]) == 2
    assert "already holds TensorBoard events" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "tb" / "plain").iterdir()) == before


def test_onnx_export_takes_one_run(tmp_path, capsys):
    assert main(["export", "a", "b", "--onnx", str(tmp_path / "m.onnx")]) == 2
    assert "export --onnx writes one run's model; got 2 runs" in capsys.readouterr().err
