"""cnnlab compare: differing keys, the table's figures against the run folders, the CLI, runs left out."""

import csv
import json
import shutil

import pytest

import cnnlab
from cnnlab import store
from cnnlab.cli import main
from cnnlab.compare import compare, comparison, differing_keys, flatten


@pytest.fixture(scope="module")
def runs(tmp_path_factory, real_mnist):
    """Two tiny runs that differ in momentum and epochs, and a copy of the first that claims 12 classes."""
    from cnnlab.run import train

    root = tmp_path_factory.mktemp("runs")
    train("tiny", out=root / "a", epochs=2, overrides=["train.threads=1"], echo=None, progress=False)
    train("tiny", out=root / "b", epochs=1, overrides=["optimizer.momentum=0.9", "train.threads=1"], echo=None,
          progress=False)
    other = root.parent / f"{root.name}-other" / "c"
    shutil.copytree(root / "a", other)
    text = (other / store.CONFIG).read_text()
    (other / store.CONFIG).write_text(text.replace("units = 10", "units = 12"))
    return root, other


def test_differing_keys_by_hand():
    a = {"train": {"epochs": 2, "seed": 0}, "model": {"layers": [{"name": "Dense_1", "units": 100}, {"units": 10}]},
         "optimizer": {"name": "rmsprop", "momentum": 0.8}}
    b = {"train": {"epochs": 2, "seed": 1}, "model": {"layers": [{"name": "Dense_1", "units": 64}, {"units": 10}]},
         "optimizer": {"name": "rmsprop"}}
    assert flatten(a)["model.layers.Dense_1.units"] == 100
    assert flatten(a)["model.layers.1.units"] == 10
    assert differing_keys([a, b]) == ["train.seed", "model.layers.Dense_1.units", "optimizer.momentum"]
    assert differing_keys([a, a]) == []
    assert differing_keys([{"x": 1.0}, {"x": 1}]) == ["x"]  # 1.0 and 1 are written differently in TOML


def test_rows_match_the_run_folders(runs):
    root, _ = runs
    rows = compare([root / "a", root / "b"])
    assert [r["run"] for r in rows] == [str((root / "a").resolve()), str((root / "b").resolve())]
    keys = [k for k in rows[0] if "." in k]
    assert keys == ["optimizer.momentum", "train.epochs"]
    assert [r["optimizer.momentum"] for r in rows] == [0.5, 0.9]
    for row, name in zip(rows, "ab"):
        history = json.loads((root / name / store.HISTORY_JSON).read_text())
        model = json.loads((root / name / store.MODEL).read_text())
        assert row["epochs"] == len(history)
        assert row["best_val_accuracy"] == max(h["val_accuracy"] for h in history)
        assert row["last_val_accuracy"] == history[-1]["val_accuracy"]
        assert row["seconds_per_epoch"] == pytest.approx(sum(h["seconds"] for h in history) / len(history))
        assert row["params"] == sum(layer["params"] for layer in model["layers"]) > 0
        assert row["test_accuracy"] is None  # never evaluated


def test_a_folder_and_a_glob_find_the_same_runs_and_the_package_attribute_calls(runs):
    root, _ = runs
    assert compare(root) == compare(str(root / "*"))
    assert cnnlab.compare(root) == compare(root)  # cnnlab.compare is callable even after the module import


def test_other_class_count_is_left_out_with_one_line(runs):
    root, other = runs
    lines = []
    rows = compare([root / "a", other, root / "b"], echo=lines.append)
    assert len(rows) == 2
    assert lines == [f"{other.resolve()}: left out, it trained on mnist with 12 classes and the others on mnist "
                     "with 10 classes"]


def test_cli_table_json_csv_and_curves(runs, tmp_path, capsys):
    root, _ = runs
    out = tmp_path / "cmp.png"
    assert main(["compare", str(root / "a"), str(root / "b"), "--out", str(out), "--x", "step",
                 "--csv", str(tmp_path / "t.csv")]) == 0
    text = capsys.readouterr().out
    head = text.splitlines()[0].split()
    assert head[:3] == ["run", "optimizer.momentum", "train.epochs"]
    assert text.splitlines()[1].split()[:3] == ["a", "0.5", "2"]
    assert out.stat().st_size > 10_000
    with open(out.with_suffix(".csv")) as f:
        points = list(csv.DictReader(f))
    assert len(points) == 3  # 2 epochs of a, 1 of b
    steps = [int(p["step"]) for p in points]
    assert steps[1] == 2 * steps[0] == 2 * steps[2]  # x = optimizer step, 16 batches of 32 per epoch
    assert list(csv.DictReader(open(tmp_path / "t.csv")))[1]["optimizer.momentum"] == "0.9"
    assert main(["compare", str(root), "--json", "-", "--out", str(out)]) == 0
    assert json.loads(capsys.readouterr().out) == comparison(root).rows


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["compare", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not a cnnlab run folder" in err
    assert main(["compare", str(tmp_path / "x*")]) == 2
    assert "no file or folder matches this pattern" in capsys.readouterr().err
