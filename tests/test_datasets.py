"""Data sets beyond MNIST: Fashion-MNIST (mirror and Debian routes), folders of your own IDX files, class names.

The real Fashion-MNIST comes from Debian's dataset-fashion-mnist package (``.ci/run`` installs it); the tests
that need it skip with the reason where it is missing. Everything else runs on small fake IDX files, offline.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from cnnlab.data import acquisition, load_dataset
from cnnlab.data.acquisition import FASHION_CLASSES, FASHION_FILES
from cnnlab.errors import CnnlabError
from cnnlab.version import git_commit
from idx_helpers import NAMES, fake_arrays, fake_blobs, idx_bytes, table_for, write_folder

DEBIAN_FOLDER = Path(acquisition.DATASETS["fashion-mnist"].debian_folder)


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """No network, and a cache of the test's own."""
    monkeypatch.setenv("CNNLAB_OFFLINE", "1")
    monkeypatch.setenv("CNNLAB_HOME", str(tmp_path / "home"))


def _fashion(monkeypatch, **changes) -> None:
    """Replace fields of the Fashion-MNIST entry for one test."""
    entry = dataclasses.replace(acquisition.DATASETS["fashion-mnist"], **changes)
    monkeypatch.setitem(acquisition.DATASETS, "fashion-mnist", entry)


def _needs_debian_package() -> None:
    if not all((DEBIAN_FOLDER / f"{name}.gz").is_file() for name in NAMES):
        pytest.skip(f"Debian's dataset-fashion-mnist is not installed ({DEBIAN_FOLDER} lacks the four .gz files); "
                    "apt-get install dataset-fashion-mnist (.ci/run does)")


# ---------------------------------------------------------------------------------------------- Fashion-MNIST


def test_real_fashion_mnist_from_the_debian_package_then_from_the_cache():
    _needs_debian_package()
    lines: list[str] = []
    data = load_dataset("fashion-mnist", log=lines.append)
    assert data.origin == f"debian dataset-fashion-mnist ({DEBIAN_FOLDER})"
    assert data.md5 == {name: md5 for name, (_size, md5) in FASHION_FILES.items()}
    assert data.train_images.shape == (60_000, 28, 28) and data.test_images.shape == (10_000, 28, 28)
    assert np.bincount(data.train_labels).tolist() == [6000] * 10  # Fashion-MNIST is balanced
    assert data.classes == FASHION_CLASSES and data.dataset == "fashion-mnist"
    assert "mirrors: skipped (CNNLAB_OFFLINE is set)" in lines
    again = load_dataset("fashion-mnist", log=lines.append)
    assert again.origin == "cache" and lines[-1].startswith("cache: verified")
    assert np.array_equal(again.test_images, data.test_images)


def test_debian_recompressed_gz_is_accepted_by_its_decompressed_bytes(tmp_path, monkeypatch):
    blobs = fake_blobs()
    folder = tmp_path / "debian"
    folder.mkdir()
    for name, blob in blobs.items():  # recompressed: other gz bytes than upstream's, same content
        (folder / f"{name}.gz").write_bytes(gzip.compress(blob, compresslevel=1, mtime=12345))
    _fashion(monkeypatch, debian_folder=str(folder))
    data = load_dataset("fashion-mnist", files=table_for(blobs))
    assert data.origin == f"debian dataset-fashion-mnist ({folder})"
    assert np.array_equal(data.train_images, fake_arrays()[acquisition.TRAIN_IMAGES])


def test_debian_file_with_other_content_is_refused_and_reported(tmp_path, monkeypatch):
    blobs = fake_blobs()
    table = table_for(blobs)
    blobs[acquisition.TEST_LABELS] = blobs[acquisition.TEST_LABELS][:-1] + b"\x09"
    folder = write_folder(tmp_path / "debian", blobs, gz=NAMES)
    _fashion(monkeypatch, debian_folder=str(folder))
    with pytest.raises(CnnlabError) as info:
        load_dataset("fashion-mnist", files=table)
    msg = str(info.value)
    assert f"checksum mismatch: {folder / acquisition.TEST_LABELS}.gz has md5" in msg
    assert "not the canonical Fashion-MNIST" in msg and "\n" not in msg
    assert not (acquisition.cache_dir(dataset="fashion-mnist") / acquisition.MANIFEST).exists()


def test_nothing_reachable_names_every_route_the_package_and_from(tmp_path, monkeypatch):
    _fashion(monkeypatch, debian_folder=str(tmp_path / "not-installed"))
    with pytest.raises(CnnlabError) as info:
        load_dataset("fashion-mnist")
    msg = str(info.value)
    assert msg.startswith("no verified Fashion-MNIST found (cache ")
    assert "mirrors: skipped (CNNLAB_OFFLINE is set)" in msg
    assert f"debian dataset-fashion-mnist ({tmp_path / 'not-installed'}): not installed" in msg
    assert "apt-get install dataset-fashion-mnist" in msg
    assert "cnnlab data --dataset fashion-mnist --from DIR" in msg
    assert "\n" not in msg


def test_mirror_route_checks_the_upstream_gz_md5_then_the_idx_md5(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNLAB_OFFLINE", "0")
    blobs = fake_blobs()
    upstream = write_folder(tmp_path / "upstream", blobs, gz=NAMES)
    gz_md5 = {n: hashlib.md5((upstream / f"{n}.gz").read_bytes()).hexdigest() for n in NAMES}
    other = tmp_path / "regzipped"
    other.mkdir()
    for name, blob in blobs.items():  # the same IDX bytes, other .gz bytes: not upstream's file
        (other / f"{name}.gz").write_bytes(gzip.compress(blob, compresslevel=1, mtime=1))
    _fashion(monkeypatch, mirrors=(other.as_uri() + "/", upstream.as_uri() + "/"), gz_md5=gz_md5,
             debian_folder=str(tmp_path / "none"))
    lines: list[str] = []
    data = load_dataset("fashion-mnist", files=table_for(blobs), log=lines.append)
    assert data.origin == f"mirror {upstream.as_uri()}/"
    assert any(line.startswith(f"mirror {other.as_uri()}/: checksum mismatch") and ".gz has md5" in line
               for line in lines)


# ---------------------------------------------------------------------------------------------- your own IDX


def _own_folder(tmp_path: Path, classes: list[str] | None = None, n_classes: int = 3) -> Path:
    rng = np.random.default_rng(1)
    arrays = fake_arrays(n_train=12, n_test=6)
    arrays[acquisition.TRAIN_LABELS] = rng.integers(0, n_classes, 12, dtype=np.uint8)
    arrays[acquisition.TEST_LABELS] = rng.integers(0, n_classes, 6, dtype=np.uint8)
    arrays[acquisition.TRAIN_LABELS][0] = n_classes - 1
    folder = write_folder(tmp_path / "own", {n: idx_bytes(a) for n, a in arrays.items()}, gz=(acquisition.TEST_IMAGES,))
    if classes is not None:
        (folder / "classes.txt").write_text("\n".join(classes) + "\n\n", encoding="utf-8")
    return folder


def test_own_idx_folder_with_classes_txt(tmp_path):
    folder = _own_folder(tmp_path, ["cat", "dog", "bird"])
    data = load_dataset("idx", source=folder)
    assert data.dataset == "idx" and data.classes == ("cat", "dog", "bird")
    assert data.origin == f"folder {folder}" and data.train_images.shape == (12, 28, 28)
    blob = (folder / acquisition.TRAIN_LABELS).read_bytes()
    assert data.md5[acquisition.TRAIN_LABELS] == hashlib.md5(blob).hexdigest()
    assert load_dataset("idx", source=folder, classes=["a", "b", "c"]).classes == ("a", "b", "c")


def test_own_idx_folder_without_names_numbers_its_classes(tmp_path):
    assert load_dataset("idx", source=_own_folder(tmp_path, n_classes=4)).classes == ("0", "1", "2", "3")


@pytest.mark.parametrize("classes, message", [
    (["a", "b"], "data.classes: 2 class names, but the labels go up to 2; give one name per label 0..2"),
    (["a", "a", "b"], "data.classes: the class name 'a' is given twice"),
    (["a", "", "b"], "data.classes: expected a list of non-empty class names"),
])
def test_class_names_that_do_not_fit_are_one_line_errors(tmp_path, classes, message):
    with pytest.raises(CnnlabError, match=message):
        load_dataset("idx", source=_own_folder(tmp_path), classes=classes)


def test_own_idx_folder_needs_a_source_and_28x28_images(tmp_path):
    with pytest.raises(CnnlabError, match="data.dataset = 'idx' reads a folder of your own IDX files: set "
                                          "data.source"):
        load_dataset("idx")
    arrays = fake_arrays()
    arrays[acquisition.TRAIN_IMAGES] = np.zeros((6, 32, 32), np.uint8)
    arrays[acquisition.TEST_IMAGES] = np.zeros((4, 32, 32), np.uint8)
    folder = write_folder(tmp_path / "big", {n: idx_bytes(a) for n, a in arrays.items()})
    with pytest.raises(CnnlabError, match="images of 32x32 pixels; cnnlab's models take 28x28 images"):
        load_dataset("idx", source=folder)


def test_unknown_data_set_suggests_the_close_name():
    with pytest.raises(CnnlabError, match=r"data.dataset: 'fashion_mnist' is not one of mnist, fashion-mnist, idx "
                                          r"\(did you mean 'fashion-mnist'\?\)"):
        load_dataset("fashion_mnist")


# ---------------------------------------------------------------------------------------------- class names


NAMES10 = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def test_class_names_reach_the_run_its_evaluation_and_its_pictures(tmp_path):
    import cnnlab
    from cnnlab import report

    folder = _own_folder(tmp_path, list(NAMES10), n_classes=10)
    run = cnnlab.train("tiny", out=tmp_path / "run", echo=None,
                       overrides=["data.dataset=idx", f"data.source={json.dumps(str(folder))}"])
    assert run.classes == NAMES10
    assert json.loads((run.path / "model.json").read_text())["classes"] == list(NAMES10)
    session = json.loads((run.path / "provenance.json").read_text())["sessions"][-1]
    assert session["dataset"] == "idx" and session["cnnlab_commit"] == git_commit()
    assert cnnlab.load(run.path).classes == NAMES10
    summary = report.evaluation_pictures(run, mistakes=4).summary
    assert list(summary["per_class_accuracy"]) == list(NAMES10)
    assert summary["confusion"]["classes"] == list(NAMES10)
    assert json.loads((run.path / "inspect" / "evaluation.json").read_text())["per_class_accuracy"].keys() \
        == set(NAMES10)
    picked = report.saliency_pictures(run, [0]).summary
    test_labels = acquisition.read_idx((folder / acquisition.TEST_LABELS).read_bytes())
    assert picked["label_names"] == [NAMES10[int(test_labels[0])]]
    assert picked["predicted_names"][0] in NAMES10


def test_cli_data_shows_the_class_names_of_an_idx_folder(tmp_path, capsys):
    from cnnlab.cli import main

    folder = _own_folder(tmp_path, ["cat", "dog", "bird"])
    assert main(["data", "--dataset", "idx", "--from", str(folder)]) == 0
    out = capsys.readouterr().out
    assert f"IDX folder {folder} read (folder {folder}):" in out
    assert "  classes: cat, dog, bird" in out
    assert main(["data", "--dataset", "fashion_mnist"]) == 2
    assert "did you mean 'fashion-mnist'?" in capsys.readouterr().err


def test_fashion_preset_stays_within_the_seed_models_multiply_adds():
    from cnnlab.config import load_config
    from cnnlab.model import build_model, layer_table

    def macs(preset: str) -> int:
        cfg = load_config(preset=preset)
        return sum(row.macs for row in layer_table(build_model(cfg.model.layers, init=cfg.model.init)))

    fashion = load_config(preset="fashion")
    assert fashion.data.dataset == "fashion-mnist" and fashion.data.validation == 0
    assert macs("fashion") <= macs("seed") == 3_204_712
