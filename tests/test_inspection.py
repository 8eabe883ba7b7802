"""Looking inside a trained tiny run: values checked against hand computations, not just files on disk."""

import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import cnnlab
from cnnlab.cli import main
from cnnlab.cli_inspect import parse_indices
from cnnlab.errors import CnnlabError
from cnnlab.inspection import activations as act
from cnnlab.inspection import evaluation as ev
from cnnlab.inspection import filters as flt
from cnnlab.inspection import patterns as pat
from cnnlab.inspection import saliency as sal
from cnnlab.inspection.images import ImageSets


@pytest.fixture(scope="module")
def run(real_mnist, tmp_path_factory):
    """The tiny preset trained 2 epochs (512 training, 256 test images): Conv2D_1 (4 maps) ... Dense_2."""
    return cnnlab.train("tiny", out=tmp_path_factory.mktemp("inspect") / "tiny", epochs=2, echo=None)


@pytest.fixture(scope="module")
def raw_test(run):
    return ImageSets(run.config).images("test")


def manual_forward(model, x, upto):
    """The forward pass written out with torch.nn.functional, layer by layer, up to ``upto``."""
    for name, layer in model.layers.items():
        if layer.kind == "conv":
            x = F.relu(F.conv2d(x, layer.op.weight, layer.op.bias, padding=layer.op.padding))
        elif layer.kind == "maxpool":
            x = F.max_pool2d(x, 2)
        elif layer.kind == "flatten":
            x = x.flatten(1)
        elif layer.kind == "dense":
            x = F.linear(x, layer.op.weight, layer.op.bias)
            x = F.relu(x) if layer.spec["activation"] == "relu" else x
        if name == upto:
            return x
    raise AssertionError(upto)


def no_hooks(model):
    return all(not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks for m in model.modules())


# ---------------------------------------------------------------------------------------------------------
# Activations


@pytest.mark.parametrize("layer", ["Conv2D_1", "Max_Pool_1", "Conv2D_2", "Max_Pool_2", "Flatten_1", "Dense_1"])
def test_activations_equal_a_manual_forward_pass(run, raw_test, layer):
    images = raw_test[:40]
    got = run.activations(layer, images)
    with torch.no_grad():
        want = manual_forward(run.model, run.normalizer.apply(images), layer).numpy()
    assert got.shape == (40, *run.model.output_shapes[layer]) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    if layer.startswith("Conv"):
        assert got.min() == 0.0 and got.max() > 0.0  # what the ReLU produced


def test_activations_are_side_effect_free_and_chunked(run, raw_test):
    model = run.model
    model.train()  # a user's model in training mode stays in training mode
    try:
        x = run.normalizer.apply(raw_test[:50])
        whole = act.layer_activations(model, x, "Conv2D_2")
        chunked = act.layer_activations(model, x, "Conv2D_2", chunk=7)
        means = act.map_means(model, x, "Conv2D_2", chunk=9)
        assert model.training and no_hooks(model)
        assert all(p.grad is None for p in model.parameters())
    finally:
        model.eval()
    np.testing.assert_allclose(whole, chunked, rtol=1e-5, atol=1e-6)  # conv kernels may differ by batch size
    np.testing.assert_allclose(means, whole.mean(axis=(2, 3)), rtol=1e-5, atol=1e-6)


def test_inplace_activations_give_the_same_values(run, raw_test):
    x = run.normalizer.apply(raw_test[:20])
    before = {n: act.layer_activations(run.model, x, n) for n in ("Conv2D_1", "Conv2D_2", "Dense_1")}
    originals = {n: lay.act for n, lay in run.model.layers.items()}
    try:
        for name in ("Conv2D_1", "Conv2D_2", "Dense_1"):
            run.model.layers[name].act = nn.ReLU(inplace=True)
        for name, values in before.items():
            np.testing.assert_array_equal(act.layer_activations(run.model, x, name), values)
    finally:
        for name, module in originals.items():
            run.model.layers[name].act = module


def test_image_sets_follow_the_runs_own_split(run):
    data, sets = run.data(), ImageSets(run.config)
    for image_set, x, y in (("test", data.test_x, data.test_y), ("train", data.train_x, data.train_y)):
        picked = sets.pick(image_set, [0, 19, len(y) - 1])
        assert sets.size(image_set) == len(y)
        torch.testing.assert_close(run.normalizer.apply(picked.images), x[[0, 19, len(y) - 1]])
        assert picked.labels.tolist() == y[[0, 19, len(y) - 1]].tolist()


@pytest.mark.parametrize("split, validation", [("standard", 0), ("reshuffle", 300)])
def test_whole_image_sets_are_the_prepared_sets_bit_for_bit(real_mnist, split, validation):
    from cnnlab.config import load_config
    from cnnlab.data import prepare

    config = load_config(preset="tiny", overrides=[f"data.split={split}", f"data.validation={validation}"])
    d = config.data
    data = prepare(real_mnist, normalize="pixel", split=d.split, validation=d.validation, seed=config.train.seed,
                   limit_train=d.limit_train, limit_test=d.limit_test)
    sets = ImageSets(config, real_mnist)
    for image_set, x, y in (("test", data.test_x, data.test_y), ("train", data.train_x, data.train_y)):
        assert torch.equal(data.normalizer.apply(sets.images(image_set)), x)
        assert sets.labels(image_set).dtype == np.int64 and np.array_equal(sets.labels(image_set), y.numpy())


@pytest.mark.parametrize("overrides", [["data.split=standard"], ["data.split=reshuffle", "data.validation=300"],
                                       ["data.split=reshuffle", "data.limit_train=5000"]])
def test_a_sets_hash_and_its_blocks_need_not_gather_the_whole_set(real_mnist, overrides):
    from cnnlab.config import load_config
    from cnnlab.inspection import cache

    config = load_config(preset="tiny", overrides=overrides)
    for image_set in ("train", "test"):
        fresh = ImageSets(config, real_mnist)
        key = fresh.set_hash(image_set)  # in blocks, from the pool
        whole = ImageSets(config, real_mnist)
        images, labels = whole.images(image_set), whole.labels(image_set)
        assert key == cache.arrays_hash(images, labels) == whole.set_hash(image_set)
        rows = np.array([0, 7, len(labels) - 1, 3])
        assert np.array_equal(fresh.gather(image_set, rows), images[rows])
        assert np.array_equal(fresh.gather(image_set, slice(100, 4200)), images[100:4200])
    other = ImageSets(load_config(preset="tiny", overrides=["data.split=reshuffle", "data.limit_train=4999"]),
                      real_mnist)
    assert other.set_hash("train") != ImageSets(config, real_mnist).set_hash("train")


def test_streamed_hash_is_arrays_hash_in_any_blocks():
    from cnnlab.inspection import cache

    a = np.arange(5 * 28 * 28, dtype=np.uint8).reshape(5, 28, 28)
    b = np.array([3, 1, 4, 1, 5], dtype=np.int64)
    want = cache.arrays_hash(a, b)
    assert cache.streamed_hash((a.dtype, a.shape, [a[:2], a[2:3], a[3:]]), (b.dtype, b.shape, [b])) == want
    assert cache.streamed_hash((a.dtype, a.shape, [a]), (b.dtype, b.shape, [b[:1], b[1:]])) == want
    assert cache.streamed_hash((a.dtype, a.shape, [a[:4]]), (b.dtype, b.shape, [b])) != want


def test_a_whole_image_set_is_gathered_once_and_read_only(run):
    sets = ImageSets(run.config)
    images, labels = sets.images("train"), sets.labels("train")
    assert sets.images("train") is images and sets.labels("train") is labels  # kept: gathered once
    with pytest.raises(ValueError, match="read-only"):
        images[0, 0, 0] = 1  # shared by every caller: a change in place fails instead of spreading
    with pytest.raises(ValueError, match="read-only"):
        labels[0] = 1
    torch.testing.assert_close(run.prepare(images[:3]), run.data().train_x[:3])  # read-only images still go in


def test_the_reports_test_pass_sees_what_run_test_data_gives(run):
    from cnnlab import report

    x, y = run.test_data()
    shared = report.test_pass(run)
    assert torch.equal(shared.prepare(shared.x), x) and np.array_equal(shared.labels, y.numpy())


def test_the_pictures_of_a_run_share_one_load_of_its_images(run, raw_test, monkeypatch):
    from cnnlab import report

    first = report.image_sets(run)
    monkeypatch.setattr(report, "ImageSets", lambda config: pytest.fail("loaded the images again"))
    assert report.image_sets(run) is first and np.array_equal(first.images("test"), raw_test)
    report.evaluation_pictures(run, mistakes=3, out=run.path / "shared")  # its gallery uses them too


def test_scale_maps_is_the_articles_standardize_and_clip():
    maps = np.array([[[0.0, 1.0], [2.0, 9.0]], [[3.0, 3.0], [3.0, 3.0]]], dtype=np.float32)
    z = (maps[0] - maps[0].mean()) / maps[0].std()
    np.testing.assert_allclose(act.scale_maps(maps)[0], np.clip(128 + 64 * z, 0, 255), rtol=1e-6)
    np.testing.assert_array_equal(act.scale_maps(maps)[1], np.zeros((2, 2)))  # constant map: 0, as the articles


def test_bad_layer_names_and_indices_are_one_line_errors(run, raw_test, capsys):
    with pytest.raises(CnnlabError, match=r"no layer named 'Conv9'; valid names: Conv2D_1, Max_Pool_1, Conv2D_2"):
        run.activations("Conv9", raw_test[:1])
    with pytest.raises(CnnlabError, match=r"images must be uint8 of shape \(N, 28, 28\)"):
        run.activations("Conv2D_1", raw_test[:1].astype(np.float32))
    with pytest.raises(CnnlabError, match=r"--image 256 is out of range: the test set of this run has 256 images, "
                                          r"so use 0\.\.255"):
        ImageSets(run.config).pick("test", [3, 256])
    for argv, expected in ((["--layer", "Conv9", "--image", "0"], "valid names: Conv2D_1, Max_Pool_1"),
                           (["--layer", "Conv2D_1", "--image", "300"], "so use 0..255"),
                           (["--layer", "Conv2D_1", "--image", "1,x"], "expected whole numbers"),
                           (["--layer", "Conv2D_1", "--image", "0", "--cmap", "nope"], "not a matplotlib colour map")):
        assert main(["activations", str(run.path), *argv]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and expected in err
    assert main(["filters", str(run.path), "--layer", "Conv2D_2", "--maps", "0-8"]) == 2
    assert "layer Conv2D_2 has 8 maps, so use 0..7" in capsys.readouterr().err
    assert not (run.path / "inspect").exists() or not list((run.path / "inspect").glob("*Conv9*"))


def test_parse_indices():
    assert parse_indices("19") == [19]
    assert parse_indices("19,20,21") == [19, 20, 21]
    assert parse_indices("0-3,9") == [0, 1, 2, 3, 9]
    for bad in ("", "a", "3-1", "-2", "1,,2"):
        with pytest.raises(CnnlabError):
            parse_indices(bad)


def test_activations_cli_writes_a_png_and_the_raw_arrays(run, raw_test, capsys, tmp_path):
    assert main(["activations", str(run.path), "--layer", "Conv2D_1", "--image", "19,20"]) == 0
    out = capsys.readouterr().out
    for i in (19, 20):
        png = run.path / "inspect" / f"activations_Conv2D_1_test{i}.png"
        assert f"wrote {png}" in out and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        saved = np.load(png.with_suffix(".npz"))
        # (a batch of two against a batch of one: channels-last convolutions may round differently per batch)
        np.testing.assert_allclose(saved["activations"], run.activations("Conv2D_1", raw_test[i:i + 1])[0],
                                   rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(saved["image"], raw_test[i])
        assert str(saved["layer"]) == "Conv2D_1" and int(saved["index"]) == i
    assert main(["activations", str(run.path), "--layer", "all", "--image", "3", "--scale",
                 "--out", str(tmp_path / "mine.png")]) == 0
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == sorted(f"mine_activations_{n}_test3_scaled.{ext}" for n in ("Conv2D_1", "Max_Pool_1", "Conv2D_2",
                                                                          "Max_Pool_2") for ext in ("png", "npz"))
    scaled = np.load(tmp_path / "mine_activations_Conv2D_2_test3_scaled.npz")["scaled"]
    assert scaled.min() >= 0 and scaled.max() <= 255


def test_inspection_imports_neither_matplotlib_nor_the_training_loop():
    code = ("import sys, cnnlab.inspection.activations, cnnlab.inspection.filters, cnnlab.inspection.patterns, "
            "cnnlab.inspection.evaluation, cnnlab.inspection.saliency, cnnlab.inspection.images; "
            "print(sorted(m for m in sys.modules if m.startswith(('matplotlib', 'cnnlab.loop', 'cnnlab.run'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ---------------------------------------------------------------------------------------------------------
# Filter patterns


@pytest.mark.parametrize("layer", ["Conv2D_1", "Conv2D_2"])
def test_gradient_ascent_patterns_beat_the_data_on_their_map(run, layer):
    data = run.data()
    weights = {k: v.clone() for k, v in run.model.state_dict().items()}
    result = flt.filter_patterns(run.model, layer, flt.pixel_bounds(data.train_x))
    # the reported activation is the real one of the returned input
    own = act.map_means(run.model, torch.from_numpy(result.inputs), layer)[np.arange(len(result.maps)), result.maps]
    np.testing.assert_allclose(result.activation, own, rtol=1e-5)
    test = flt.pattern_ratios(result.activation, result.maps, act.map_means(run.model, data.test_x, layer))
    assert (test["ratio_mean"] > 1).all(), test["ratio_mean"]  # beats what the test images do on average
    # ... and every single training image, whose per-pixel range bounds the search. (A test image may have
    # ink where none of the tiny preset's 512 training images has any, outside the search box.)
    train = flt.pattern_ratios(result.activation, result.maps, act.map_means(run.model, data.train_x, layer))
    assert (train["ratio_max"] > 1).all(), train["ratio_max"]
    low, high = flt.pixel_bounds(data.train_x)
    assert (result.inputs >= low.numpy() - 1e-6).all() and (result.inputs <= high.numpy() + 1e-6).all()
    assert all(torch.equal(weights[k], v) for k, v in run.model.state_dict().items())
    assert all(p.grad is None for p in run.model.parameters()) and not run.model.training


def test_the_ascent_asks_for_no_weight_gradient_and_restores_requires_grad(run, monkeypatch):
    """The backward passes of the ascent compute the input's gradient alone: no parameter requires a gradient
    while it runs, and each keeps its own setting after (one frozen beforehand stays frozen)."""
    seen = []
    objective = flt._objective

    def watched(model, *args):
        seen.append([p.requires_grad for p in model.parameters()])
        return objective(model, *args)
    monkeypatch.setattr(flt, "_objective", watched)
    first = next(run.model.parameters())
    first.requires_grad_(False)
    try:
        flt.filter_patterns(run.model, "Conv2D_2", flt.pixel_bounds(run.data().train_x), maps=[0, 1], steps=3)
        after = [p.requires_grad for p in run.model.parameters()]
    finally:
        first.requires_grad_(True)
    assert len(seen) >= 3 and not any(any(step) for step in seen)
    assert after == [False] + [True] * (len(after) - 1)


@pytest.mark.parametrize("layer,before", [("Conv2D_1", None), ("Conv2D_2", "Max_Pool_1")])
def test_the_ascent_computes_each_images_own_map_alone(run, layer, before):
    """The objective runs a conv layer as one grouped convolution, image i through filter target[i] alone: the
    maps and the input gradients of running the whole layer and picking, up to float rounding."""
    model = run.model
    x = torch.randn(6, 1, 28, 28, generator=torch.Generator().manual_seed(3)).requires_grad_()
    named = model.layers[layer]
    target = torch.tensor([3, 0, 1, 2, 3, 1])
    results = []
    for maps in (lambda h: flt._own_maps(named, h, target), lambda h: named.op(h)[torch.arange(6), target]):
        hidden = x if before is None else model.activation(x, before)
        picked = maps(hidden)
        results.append((picked.detach(), torch.autograd.grad(picked.square().sum(), x)[0]))
    (own, own_grad), (whole, whole_grad) = results
    assert own.shape == whole.shape == (6, *model.output_shapes[layer][1:])
    torch.testing.assert_close(own, whole, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(own_grad, whole_grad, rtol=1e-4, atol=1e-4)


def test_the_ascent_runs_the_whole_layer_where_maps_mix_or_the_op_is_not_a_plain_conv(run):
    named = run.model.layers["Conv2D_2"]
    hidden, target = torch.randn(2, 4, 13, 13), torch.tensor([0, 1])
    assert flt._own_maps(named, hidden, target) is not None
    softmax = type(named)({**named.spec, "activation": "softmax"}, named.op, "softmax")  # over the maps
    assert flt._own_maps(softmax, hidden, target) is None
    padded = type(named)(named.spec, nn.Sequential(nn.ZeroPad2d(1), named.op), "relu")  # e.g. Keras 'same', stride 2
    assert flt._own_maps(padded, hidden, target) is None
    assert flt._own_maps(run.model.layers["Dense_1"], torch.randn(2, 200), target) is None


def test_frozen_weights_restores_each_setting_after_an_error():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    model[1].bias.requires_grad_(False)
    with pytest.raises(RuntimeError, match="stop"):
        with act.frozen_weights(model):
            assert not any(p.requires_grad for p in model.parameters())
            raise RuntimeError("stop")
    assert [p.requires_grad for p in model.parameters()] == [True, True, True, False]


def test_filters_command_reports_the_ratio_per_map(run, capsys):
    assert main(["filters", str(run.path), "--layer", "Conv2D_2", "--maps", "0-3", "--steps", "64"]) == 0
    out = capsys.readouterr().out
    saved = np.load(run.path / "inspect" / "filters_Conv2D_2_maps0-3.npz")
    assert saved["maps"].tolist() == [0, 1, 2, 3] and saved["pixels"].shape == (4, 28, 28)
    for m, r in zip(saved["maps"], saved["ratio"]):
        assert f"{m:>4}" in out and f"{r:7.3g}" in out
    assert "pattern / average test image: min" in out


# ---------------------------------------------------------------------------------------------------------
# Class patterns, evaluation, saliency


def test_class_means_equal_a_manual_mean(run):
    data = run.data()
    result = pat.class_patterns(run.model, data.test_x, data.test_y, "Conv2D_2", chunk=37)
    maps = act.layer_activations(run.model, data.test_x, "Conv2D_2")
    labels = data.test_y.numpy()
    assert result.counts.sum() == len(labels)
    for k in range(10):
        np.testing.assert_allclose(result.map_images[k], maps[labels == k].mean(axis=0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(result.means[k], maps[labels == k].mean(axis=(0, 2, 3)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.features, maps.mean(axis=(2, 3)), rtol=1e-5, atol=1e-6)


def test_nearest_class_pattern_is_cosine_to_training_class_means(run):
    data = run.data()
    result = pat.nearest_pattern(run.model, data.train_x, data.train_y, data.test_x, data.test_y, "Conv2D_2")
    train = act.map_means(run.model, data.train_x, "Conv2D_2")
    test = act.map_means(run.model, data.test_x, "Conv2D_2")
    centroids = np.stack([train[data.train_y.numpy() == k].mean(axis=0) for k in range(10)])
    np.testing.assert_allclose(result.centroids, centroids, rtol=1e-5, atol=1e-6)
    cos = (test @ centroids.T) / np.linalg.norm(test, axis=1)[:, None] / np.linalg.norm(centroids, axis=1)
    assert (result.predictions == cos.argmax(axis=1)).mean() > 0.99  # ties and rounding aside
    assert result.accuracy == pytest.approx((result.predictions == data.test_y.numpy()).mean())
    assert result.accuracy > 0.3  # far above chance (0.1) even for the tiny net


def test_confusion_matrix_sums_to_the_test_size_and_its_diagonal_is_the_correct_ones(run, capsys):
    data = run.data()
    result = ev.evaluate(run.model, data.test_x, data.test_y)
    with torch.no_grad():
        predicted = run.model(data.test_x).argmax(1).numpy()
    labels = data.test_y.numpy()
    assert result.confusion.sum() == len(labels) == 256
    assert np.trace(result.confusion) == (predicted == labels).sum()
    assert result.accuracy == pytest.approx((predicted == labels).mean())
    assert result.accuracy == pytest.approx(run.evaluate()["accuracy"])
    assert result.confusion[3].sum() == (labels == 3).sum() and result.confusion[:, 3].sum() == (predicted == 3).sum()
    worst = ev.confident_mistakes(result, 5)
    assert (result.predictions[worst] != labels[worst]).all()
    confidence = result.probabilities[worst, result.predictions[worst]]
    assert (np.diff(confidence) <= 0).all()
    assert main(["evaluate", str(run.path)]) == 0
    import json

    record = json.loads((run.path / "inspect" / "evaluation.json").read_text())
    assert record["confusion"]["matrix"] == result.confusion.tolist() and record["images"] == 256
    assert f"accuracy {result.accuracy:.4f}" in capsys.readouterr().out


def test_saliency_is_the_input_gradient_and_grad_cam_is_non_negative(run, raw_test):
    x = run.normalizer.apply(raw_test[:3])
    result = sal.saliency(run.model, x)
    manual = x.clone().requires_grad_(True)
    logits = run.model(manual)
    picked = logits[torch.arange(3), logits.argmax(1)].sum()
    (grad,) = torch.autograd.grad(picked, manual)
    np.testing.assert_allclose(result.gradient, grad.abs()[:, 0].numpy(), rtol=1e-5, atol=1e-7)
    assert result.layer == "Conv2D_2" and result.grad_cam.shape == (3, 28, 28) and (result.grad_cam >= 0).all()
    assert result.targets.tolist() == logits.argmax(1).tolist()
    maps = manual_forward(run.model, x, "Conv2D_2").detach().requires_grad_(True)  # Grad-CAM by hand
    d1, d2 = run.model.layers["Dense_1"].op, run.model.layers["Dense_2"].op
    rest = F.linear(F.relu(F.linear(F.max_pool2d(maps, 2).flatten(1), d1.weight, d1.bias)), d2.weight, d2.bias)
    (g,) = torch.autograd.grad(rest[torch.arange(3), result.targets].sum(), maps)
    cam = F.relu((g.mean(dim=(2, 3), keepdim=True) * maps).sum(1)).detach().numpy()
    np.testing.assert_allclose(result.grad_cam_maps, cam, rtol=1e-4, atol=1e-6)
    assert all(p.grad is None for p in run.model.parameters()) and no_hooks(run.model)


def test_split_picks_the_image_set_and_the_old_set_spelling_still_works_with_a_warning(run, capsys, tmp_path):
    train_png = tmp_path / "split" / "activations_Conv2D_1_train5.png"
    assert main(["activations", str(run.path), "--layer", "Conv2D_1", "--image", "5", "--split", "train",
                 "--out", str(tmp_path / "split")]) == 0
    assert f"wrote {train_png}" in capsys.readouterr().out
    old = tmp_path / "old" / "activations_Conv2D_1_train5.png"
    assert main(["activations", str(run.path), "--layer", "Conv2D_1", "--image", "5", "--set", "train",
                 "--out", str(tmp_path / "old")]) == 0
    out, err = capsys.readouterr()
    assert f"wrote {old}" in out and old.read_bytes() == train_png.read_bytes()
    assert err == ("cnnlab: warning: --set train is deprecated here and goes in the next release; use --split "
                   "train (--set KEY=VALUE means a config override elsewhere)\n")
    for argv, message in ((["--set", "optimizer.momentum=0.9"], "--set: 'optimizer.momentum=0.9' is not one of "
                                                                 "test, train"),
                          (["--split", "train", "--set", "train"], "give --split only"),
                          (["--split", "tran"], "invalid choice: 'tran'")):
        assert main(["saliency", str(run.path), "--image", "0", *argv]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err


def test_fit_centroids_are_class_means_with_zeros_for_a_class_without_images():
    from cnnlab.inspection.patterns import fit_centroids

    features = np.array([[1.0, 2.0], [3.0, 4.0], [10.0, 0.0], [0.5, 0.5]], dtype=np.float32)
    centroids = fit_centroids(features, np.array([0, 0, 2, 3]), num_classes=4)
    np.testing.assert_array_equal(centroids, [[2.0, 3.0], [0.0, 0.0], [10.0, 0.0], [0.5, 0.5]])
    assert centroids.dtype == np.float32
