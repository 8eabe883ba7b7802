"""Inspection on the fast path: one forward pass for several views, filter patterns and class centroids cached by
the weights' hash, and no optimizer machinery (torch._dynamo) in commands that do not train."""

import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

import cnnlab
from cnnlab import native
from cnnlab.config import load_config
from cnnlab.inspection import activations as act
from cnnlab.inspection import cache
from cnnlab.inspection import filters as flt
from cnnlab.inspection import patterns as pat
from cnnlab.inspection.shared import SharedPass
from cnnlab.model import build_model
from tests.conftest import cli_env


@pytest.fixture(scope="module")
def run(real_mnist, tmp_path_factory):
    """The tiny preset trained 1 epoch (512 training, 256 test images)."""
    return cnnlab.train("tiny", out=tmp_path_factory.mktemp("speed") / "tiny", epochs=1, echo=None)


def layer_by_layer(model, x, upto):
    for name, layer in model.layers.items():
        x = layer(x)
        if name == upto:
            return x
    raise AssertionError(upto)


@pytest.mark.parametrize("channels_last", [False, True])
def test_outputs_serve_several_layers_and_the_logits_from_one_pass(channels_last):
    native.prepare(echo=None)
    torch.manual_seed(0)
    model = build_model(load_config(preset="seed").model.layers).eval()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    x = torch.randn(16, 1, 28, 28)
    with torch.no_grad():
        for name in model.layer_names:  # fused where the pool's input is not asked for: the same values
            torch.testing.assert_close(model.activation(x, name), layer_by_layer(model, x, name), rtol=1e-4,
                                       atol=1e-5)
        wanted = ["Conv2D_1", "Max_Pool_2", "Conv2D_3", "Dense_2"]
        logits, got = model.outputs(x, wanted, logits=True)
        torch.testing.assert_close(logits, model(x), rtol=1e-4, atol=1e-5)
        assert list(got) == wanted
        for name in wanted:
            torch.testing.assert_close(got[name], layer_by_layer(model, x, name), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(got["Dense_2"].sum(1), torch.ones(16))  # the softmax layer's own output
        none, early = model.outputs(x, ["Max_Pool_1"])
        assert none is None and list(early) == ["Max_Pool_1"]


def test_a_shared_pass_gives_what_separate_passes_give_in_one_pass(run, monkeypatch):
    data = run.data()
    calls = []
    outputs = run.model.outputs
    monkeypatch.setattr(run.model, "outputs", lambda *a, **k: calls.append(a[1]) or outputs(*a, **k))
    shared = SharedPass(run.model, data.test_x, data.test_y, chunk=100)
    shared.want(means=["Conv2D_1", "Conv2D_2"], class_sums=["Conv2D_2"], logits=True)
    assert len(calls) == 3  # 256 images in chunks of 100: one pass
    shared.means("Conv2D_1"), shared.class_sums("Conv2D_2"), shared.logits()
    assert len(calls) == 3  # all kept
    monkeypatch.undo()
    for layer in ("Conv2D_1", "Conv2D_2"):
        np.testing.assert_allclose(shared.means(layer), act.map_means(run.model, data.test_x, layer),
                                   rtol=1e-5, atol=1e-6)
    alone = pat.class_patterns(run.model, data.test_x, data.test_y, "Conv2D_2")
    kept = pat.patterns_from_sums("Conv2D_2", shared.class_sums("Conv2D_2"), data.test_y, shared.means("Conv2D_2"))
    np.testing.assert_array_equal(kept.counts, alone.counts)
    np.testing.assert_allclose(kept.map_images, alone.map_images, rtol=1e-5, atol=1e-6)
    by_hand = torch.stack([layer_by_layer(run.model, data.test_x[data.test_y == k], "Conv2D_2").double().sum(0)
                           for k in range(10)])
    torch.testing.assert_close(torch.from_numpy(shared.class_sums("Conv2D_2")), by_hand, rtol=1e-5, atol=1e-4)
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(shared.logits()), run.model(data.test_x), rtol=1e-4, atol=1e-5)


def test_hand_written_adam_is_torchs_adam_bit_for_bit():
    torch.manual_seed(0)
    a = torch.randn(5, 1, 4, 4, requires_grad=True)
    b = a.detach().clone().requires_grad_()
    theirs, mine = torch.optim.Adam([a], lr=0.05), flt._Adam(b, 0.05)
    for _ in range(30):
        grad = torch.randn(5, 1, 4, 4)
        a.grad, b.grad = grad.clone(), grad.clone()
        theirs.step()
        mine.step()
    assert torch.equal(a, b)


def test_filter_patterns_are_computed_once_per_weights(run, monkeypatch):
    bounds = flt.pixel_bounds(run.data().train_x)
    computed = []
    compute = flt.filter_patterns
    monkeypatch.setattr(flt, "filter_patterns", lambda *a, **k: computed.append(a[1]) or compute(*a, **k))
    first = flt.cached_filter_patterns(run.path, run.model, "Conv2D_1", bounds, maps=[0, 2], steps=4)
    files = sorted((run.path / cache.CACHE_DIR / "filters").glob("Conv2D_1-*.npz"))
    assert computed == ["Conv2D_1"] and len(files) == 1
    again = flt.cached_filter_patterns(run.path, run.model, "Conv2D_1", bounds, maps=[0, 2], steps=4)
    assert computed == ["Conv2D_1"]  # from the file
    for field in ("maps", "inputs", "pixels", "activation"):
        np.testing.assert_array_equal(getattr(again, field), getattr(first, field))
    direct = compute(run.model, "Conv2D_1", bounds, maps=[0, 2], steps=4)
    np.testing.assert_array_equal(first.inputs, direct.inputs)  # the same as computing afresh
    flt.cached_filter_patterns(run.path, run.model, "Conv2D_1", bounds, maps=[0, 2], steps=5)
    assert computed == ["Conv2D_1"] * 2  # other settings: another entry
    files[0].write_bytes(b"damaged")
    flt.cached_filter_patterns(run.path, run.model, "Conv2D_1", bounds, maps=[0, 2], steps=4)
    assert computed == ["Conv2D_1"] * 3  # a damaged entry is computed again and replaced
    before = cache.weights_hash(run.model)
    with torch.no_grad():
        run.model.layers["Conv2D_1"].op.weight[0, 0, 0, 0] += 1e-3
    try:
        assert cache.weights_hash(run.model) != before
        flt.cached_filter_patterns(run.path, run.model, "Conv2D_1", bounds, maps=[0, 2], steps=4)
        assert computed == ["Conv2D_1"] * 4  # new weights (a resumed run): computed afresh
    finally:
        with torch.no_grad():
            run.model.layers["Conv2D_1"].op.weight[0, 0, 0, 0] -= 1e-3


def test_filter_patterns_of_several_layers_side_by_side_are_those_of_one_at_a_time(run, tmp_path):
    bounds = flt.pixel_bounds(run.data().train_x)
    layers = [n for n, lay in run.model.layers.items() if lay.kind == "conv"]
    assert len(layers) >= 2
    threads = torch.get_num_threads()
    run.model.train()  # the side-by-side computation puts the model in eval mode itself and restores it
    got = flt.cached_filter_patterns_of_layers(tmp_path / "a", run.model, layers, bounds, steps=6, workers=2)
    assert run.model.training
    run.model.eval()
    assert list(got) == sorted(layers, key=layers.index, reverse=True)  # the costliest (the deepest) first
    for layer in layers:
        alone = flt.filter_patterns(run.model, layer, bounds, steps=6)
        np.testing.assert_array_equal(got[layer].inputs, alone.inputs)
        np.testing.assert_array_equal(got[layer].activation, alone.activation)
        assert got[layer].seconds > 0
    assert torch.get_num_threads() == threads  # restored


def test_filter_patterns_do_not_depend_on_what_ran_before_in_the_process(run):
    bounds = flt.pixel_bounds(run.data().train_x)
    native.forget()  # as in a fresh process: nothing has loaded the native kernels yet
    first = flt.filter_patterns(run.model, "Conv2D_2", bounds, maps=[0, 1, 2], steps=6)
    act.map_means(run.model, run.data().test_x[:8], "Conv2D_2")  # an inference pass, which loads the kernels
    again = flt.filter_patterns(run.model, "Conv2D_2", bounds, maps=[0, 1, 2], steps=6)
    np.testing.assert_array_equal(first.inputs, again.inputs)


def test_saliency_does_not_depend_on_what_ran_before_in_the_process(run):
    from cnnlab.inspection.saliency import saliency

    x = run.data().test_x[:4]
    native.forget()
    first = saliency(run.model, x)
    act.map_means(run.model, x, "Conv2D_2")
    again = saliency(run.model, x)
    np.testing.assert_array_equal(first.grad_cam, again.grad_cam)
    np.testing.assert_array_equal(first.gradient, again.gradient)


def test_weights_hash_ignores_the_memory_layout():
    model = build_model(load_config(preset="tiny").model.layers)
    before = cache.weights_hash(model)
    model.to(memory_format=torch.channels_last)
    assert cache.weights_hash(model) == before


def test_pixel_bounds_from_raw_images_are_the_normalized_bounds(run):
    from cnnlab.report import image_sets

    raw = image_sets(run).images("train")
    low, high = flt.pixel_bounds_raw(raw, run.prepare)
    want_low, want_high = flt.pixel_bounds(run.data().train_x)
    assert low.shape == want_low.shape == (1, 28, 28)
    assert torch.equal(low, want_low) and torch.equal(high, want_high)
    flipped = lambda x: -run.prepare(x)  # a negative scale swaps the ends
    low, high = flt.pixel_bounds_raw(raw, flipped)
    assert torch.equal(low, -want_high) and torch.equal(high, -want_low)


def test_class_centroids_are_fitted_once_per_weights_and_images(run, monkeypatch):
    from cnnlab.report import image_sets

    sets = image_sets(run)
    images, labels = sets.images("train"), sets.labels("train")
    data = run.data()
    want = pat.nearest_pattern(run.model, data.train_x, data.train_y, data.test_x, data.test_y, "Conv2D_2")
    fits = []
    fit = pat.fit_centroids
    monkeypatch.setattr(pat, "fit_centroids", lambda *a: fits.append(len(a[1])) or fit(*a))
    args = (run.path, cache.weights_hash(run.model), "Conv2D_2")

    def features(images):
        return lambda: act.map_means(run.model, images, "Conv2D_2", run.prepare)

    first = pat.cached_centroids(*args, images, labels, features(images), "unit", 10)
    np.testing.assert_array_equal(first, want.centroids)  # raw images normalized a chunk at a time: the same
    assert fits == [len(labels)] and len(list((run.path / cache.CACHE_DIR / "centroids").glob("Conv2D_2-*"))) == 1
    np.testing.assert_array_equal(pat.cached_centroids(*args, images, labels, features(images), "unit", 10), first)
    assert len(fits) == 1  # read back
    pat.cached_centroids(*args, images[:-1], labels[:-1], features(images[:-1]), "unit", 10)
    pat.cached_centroids(*args, images, labels, features(images), "other normalization", 10)
    assert len(fits) == 3  # other images, another normalization: fitted afresh
    score = pat.score_nearest("Conv2D_2", first, act.map_means(run.model, data.test_x, "Conv2D_2"), data.test_y)
    assert score.accuracy == want.accuracy and np.array_equal(score.predictions, want.predictions)


def test_inspection_commands_import_no_compiler_machinery(run):
    # (torch.optim.Adam's first step imports torch._dynamo and sympy: 1-2 s of a command that trains nothing)
    code = ("import sys; from cnnlab.cli import main; "
            f"assert main(['evaluate', {str(run.path)!r}]) == 0; "
            f"assert main(['filters', {str(run.path)!r}, '--layer', 'Conv2D_1', '--steps', '3']) == 0; "
            f"assert main(['patterns', {str(run.path)!r}, '--layer', 'Conv2D_2']) == 0; "
            "print(sorted(m for m in ('torch._dynamo', 'torch._inductor', 'sympy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], env=cli_env(), capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"
    assert os.path.isdir(run.path / "cache" / "filters")


def _kept_views(folder):
    """Run `evaluate` and `patterns` on ``folder`` in a fresh process; return whether it imported torch and what
    evaluate wrote."""
    code = ("import json, sys; from cnnlab.cli import main; "
            f"assert main(['evaluate', {str(folder)!r}]) == 0; "
            f"assert main(['patterns', {str(folder)!r}, '--layer', 'Conv2D_2']) == 0; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], env=cli_env(), capture_output=True, text=True, check=True)
    record = (folder / "inspect" / "evaluation.json").read_text()
    arrays = dict(np.load(folder / "inspect" / "patterns_Conv2D_2.npz"))
    return out.stdout.strip().splitlines()[-1] == "True", record, arrays


def test_evaluate_and_patterns_draw_from_kept_results_without_torch(run, tmp_path):
    import shutil

    from cnnlab import store

    folder = tmp_path / "run"
    shutil.copytree(run.path, folder, ignore=shutil.ignore_patterns("cache", "inspect"))
    imported, record, arrays = _kept_views(folder)
    assert not imported  # nothing kept yet: the numpy model ran (the torch-free inference), torch was not needed
    kept = sorted(p.name.split("-")[0] for p in (folder / "cache" / "testpass").glob("*.npz"))
    assert kept == ["logits", "means", "sums"] and len(list((folder / "cache" / "centroids").glob("*.npz"))) == 1
    again_imported, again_record, again_arrays = _kept_views(folder)
    assert not again_imported  # everything kept: torch was never imported
    assert again_record == record
    for name, value in arrays.items():
        np.testing.assert_array_equal(again_arrays[name], value, err_msg=name)
    model = cnnlab.load(folder).model
    with torch.no_grad():  # new weights (as after a resume): computed afresh, never the old figures
        model.layers["Dense_2"].op.bias.add_(torch.arange(10.0))
    store.replace_weights(folder, model)
    new_imported, new_record, _ = _kept_views(folder)
    assert not new_imported and new_record != record
    assert len(list((folder / "cache" / "testpass").glob("logits-*.npz"))) == 2


def test_a_weights_file_hashes_as_the_model_that_loads_it(run):
    from cnnlab.runfolder import open_folder

    folder = open_folder(run.path)
    assert folder.weights == cache.weights_hash(run.model) == cache.weights_hash(cnnlab.load(run.path).model)
    assert cache.file_weights_hash(b"not safetensors") is None
    from safetensors.torch import save

    assert cache.file_weights_hash(save({"w": torch.ones(2, dtype=torch.bfloat16)})) is None  # numpy has no bf16


def test_a_damaged_or_misshapen_kept_result_is_computed_again(run, tmp_path):
    from cnnlab.inspection.shared import Keep

    data = run.data()
    keep = Keep(tmp_path, ("weights", "images"))
    first = SharedPass(run.model, data.test_x, data.test_y, keep=keep)
    logits = first.logits()
    path = keep.path("logits", "model")
    assert path.is_file()
    loads = []
    lazy = SharedPass(lambda: loads.append(1) or run.model, data.test_x, data.test_y, num_classes=10,
                      shapes=first.shapes, keep=keep)
    np.testing.assert_array_equal(lazy.logits(), logits)
    assert loads == []  # read back: the model was never asked for
    cache.keep_arrays(path, {"logits": logits[:5]})
    np.testing.assert_array_equal(SharedPass(run.model, data.test_x, data.test_y, keep=keep).logits(), logits)
    path.write_bytes(b"damaged")
    np.testing.assert_array_equal(SharedPass(run.model, data.test_x, data.test_y, keep=keep).logits(), logits)
    assert cache.read_arrays(path, ("logits",))["logits"].shape == logits.shape  # replaced
    with pytest.raises(cnnlab.CnnlabError, match="no layer named 'Conv9'; valid names: Conv2D_1, "):
        lazy.means("Conv9")


def test_training_keeps_the_test_pass_of_the_torch_free_inference(real_mnist, tmp_path):
    """Training ends with one pass of the numpy model over the test images: the bits the inspection computes when
    nothing is kept, and the last validation's logits (torch's pass over the same images) up to float rounding."""
    import shutil

    from cnnlab.report import test_pass

    trained = cnnlab.train("tiny", out=tmp_path / "run", epochs=2, overrides=["train.precision=fp32"], echo=None)
    testpass = trained.path / "cache" / "testpass"
    kept = list(testpass.glob("*.npz"))
    assert [p.name.split("-")[0] for p in kept] == ["logits"]  # at the end only, not once per epoch
    logits = np.load(kept[0])["logits"]
    assert logits.shape == (256, 10) and logits.dtype == np.float32
    shutil.rmtree(trained.path / "cache")
    computed = test_pass(trained).logits()  # the inspection's own pass over the test set
    np.testing.assert_array_equal(logits, computed)  # bit for bit: the same pass
    assert [p.name for p in testpass.glob("*.npz")] == [kept[0].name]  # under the same key
    history_accuracy = trained.history[-1]["val_accuracy"]
    assert (logits.argmax(1) == test_pass(trained).labels).mean() == history_accuracy
    imported, record, _ = _kept_views(trained.path)
    assert not imported  # patterns needed the class sums: the numpy model ran, evaluate found its logits
    resumed = cnnlab.resume(trained.path, 1, echo=None)  # new weights: their own logits, kept again
    again = [p for p in testpass.glob("logits-*.npz") if p.name != kept[0].name]
    assert len(again) == 1
    kept_again = np.load(again[0])["logits"]
    shutil.rmtree(testpass)
    np.testing.assert_array_equal(kept_again, test_pass(resumed).logits())


@pytest.mark.parametrize("setting", ["data.validation=128", "train.precision=bf16", "gelu", "gelu held-out"])
def test_training_keeps_a_test_pass_of_its_own_where_validation_is_another_pass(real_mnist, tmp_path, setting):
    """A held-out validation set or bf16 training: training ends with a float32 pass over the test images, the
    bits of the inspection's. A gelu layer (the numpy model lacks erf): the inspection's pass is torch's, and so
    is the one kept (the last validation's where it is the test pass, else one of its own)."""
    import shutil

    from cnnlab.report import test_pass

    overrides = {"gelu": ["model.layers.2.activation=gelu", "train.precision=fp32"],
                 "gelu held-out": ["model.layers.2.activation=gelu", "data.validation=128"]}.get(setting, [setting])
    trained = cnnlab.train("tiny", out=tmp_path / "run", epochs=1, overrides=overrides, echo=None)
    testpass = trained.path / "cache" / "testpass"
    kept = list(testpass.glob("*.npz"))
    assert [p.name.split("-")[0] for p in kept] == ["logits"]
    logits = np.load(kept[0])["logits"]
    assert logits.shape == (256, 10) and logits.dtype == np.float32
    shutil.rmtree(trained.path / "cache")
    assert (test_pass(trained)._numpy_model() is None) == setting.startswith("gelu")
    np.testing.assert_array_equal(logits, test_pass(trained).logits())  # bit for bit, under the same key
    assert [p.name for p in testpass.glob("*.npz")] == [kept[0].name]


def test_a_validation_is_forgotten_once_the_weights_change(real_mnist):
    from cnnlab.loop import Callback, Trainer
    from cnnlab.optim import get_optimizer, get_schedule
    from cnnlab.run import _prepare_data

    class StopInSecondEpoch(Callback):
        def on_batch_end(self, batch, logs):
            if self.trainer.state.epoch == 1:
                self.trainer.stop()

    cfg = load_config(preset="tiny")
    model = build_model(cfg.model.layers)
    optimizer = get_optimizer(cfg.optimizer, model.parameters(), schedule=get_schedule(cfg.schedule))
    trainer = Trainer(model, optimizer, _prepare_data(cfg, real_mnist), 64)
    trainer.fit(1)
    assert trainer.validation_logits is not None and trainer.validation_logits.shape == (256, 10)
    trainer.callbacks = [StopInSecondEpoch()]
    trainer.callbacks[0].trainer = trainer
    trainer.fit(1)
    assert trainer.state.epoch == 1 and trainer.validation_logits is None


def _copy_run(run, folder):
    import shutil

    shutil.copytree(run.path, folder, ignore=shutil.ignore_patterns("cache", "inspect", "report.html"))
    return folder


def _fail_here(*args, **kwargs):
    raise AssertionError("computed in the parent process")


def _inspect_arrays(folder):
    """The arrays of every picture a report wrote that do not depend on timing, and the evaluation's record."""
    arrays = {}
    for path in sorted((folder / "inspect").glob("*.npz")):
        with np.load(path) as kept:
            arrays.update({f"{path.stem}:{key}": kept[key] for key in kept.files})
    return arrays, json.loads((folder / "inspect" / "evaluation.json").read_text())


def test_the_report_makes_its_torch_free_sections_in_a_child_process(run, tmp_path, monkeypatch):
    """The test pass, the class centroids, the evaluation and the class patterns come from a child process (this
    process's passes fail if asked), and every picture's arrays are those of a report made in one process."""
    from cnnlab import report

    alone, child = _copy_run(run, tmp_path / "alone"), _copy_run(run, tmp_path / "child")
    with monkeypatch.context() as patched:
        patched.setattr(report, "_start_child", lambda *args, **kwargs: None)
        report.write_report(alone, echo=None)
    monkeypatch.setattr(SharedPass, "_compute", _fail_here)
    monkeypatch.setattr(pat, "fit_centroids", _fail_here)
    lines = []
    report.write_report(child, echo=lines.append)
    assert [line.split(" (")[0] for line in lines[:-1]] == [
        "  report: evaluation", "  report: activations of test image 19", "  report: filter patterns",
        "  report: class patterns"]
    (want, want_record), (got, got_record) = _inspect_arrays(alone), _inspect_arrays(child)
    assert got_record == want_record and sorted(got) == sorted(want) and len(got) > 40
    for key, value in want.items():
        np.testing.assert_array_equal(got[key], value, err_msg=key)
    page = (child / "report.html").read_text()
    assert "<h2>Evaluation on the test set</h2>" in page and "<h2>Class patterns of Conv2D_2</h2>" in page


def test_a_report_whose_child_fails_is_made_in_this_process(run, tmp_path, monkeypatch):
    from cnnlab import report

    folder = _copy_run(run, tmp_path / "run")
    start = report._start_child
    monkeypatch.setattr(report, "_start_child",
                        lambda folder, function, *args, **kwargs: start(folder, "no_such_function", **kwargs))
    path = report.write_report(folder, echo=None)
    assert "<h2>Class patterns of Conv2D_2</h2>" in path.read_text()
    assert (folder / "inspect" / "evaluation.json").is_file() and (folder / "inspect" / "patterns_Conv2D_2.npz").is_file()


def test_patterns_fit_the_class_centroids_in_a_child_process(run, tmp_path, monkeypatch):
    from cnnlab import report

    alone, child = _copy_run(run, tmp_path / "alone"), _copy_run(run, tmp_path / "child")
    with monkeypatch.context() as patched:
        patched.setattr(report, "_start_child", lambda *args, **kwargs: None)
        want = report.pattern_pictures(alone, "Conv2D_2").summary
    monkeypatch.setattr(pat, "fit_centroids", _fail_here)
    got = report.pattern_pictures(child, "Conv2D_2").summary
    assert got == want and 0 < got["nearest_accuracy"] <= 1
    assert report.pattern_pictures(child, "Conv2D_2").summary == want  # kept: no child this time


def _record_starts(monkeypatch):
    """The children ``child_process.start`` starts from here on, in a list."""
    from cnnlab import child_process

    started, start = [], child_process.start
    monkeypatch.setattr(child_process, "start", lambda *args, **kwargs: started.append(start(*args, **kwargs))
                        or started[-1])
    return started


def test_an_early_child_is_found_by_any_spelling_of_its_run_and_stopped_where_not_taken(run, tmp_path,
                                                                                        monkeypatch):
    from cnnlab import child_process

    folder = _copy_run(run, tmp_path / "run")
    monkeypatch.chdir(tmp_path)
    started = _record_starts(monkeypatch)
    with child_process.started_early("keep_centroids", "run", "Conv2D_2"):
        assert child_process.take("keep_centroids", folder, "Conv2D_1") is None  # another job
        child = child_process.take("keep_centroids", f"{folder}/", "Conv2D_2")
        assert child is started[0]
    assert child.poll() is None or child.returncode == 0  # taken: the block's end leaves it alone
    child_process.end(child, wait=True)
    assert child.returncode == 0 and cache.holds(folder, "centroids", "Conv2D_2")
    assert not cache.holds(folder, "centroids", "Conv2D_1") and not cache.holds(folder, "testpass", "Conv2D_2")
    with child_process.started_early("keep_centroids", folder, "Conv2D_1"):
        pass  # not taken: stopped at the end of the block
    with child_process.started_early("keep_centroids", folder, "Conv2D_1", unless=lambda: True):
        assert child_process.take("keep_centroids", folder, "Conv2D_1") is None  # never started
    assert len(started) == 2 and started[1].returncode == -signal.SIGKILL
    assert not cache.holds(folder, "centroids", "Conv2D_1")


def test_work_beside_a_child_waits_for_it_or_stops_it_where_the_work_fails():
    from cnnlab import child_process

    quick = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.2)"])
    with child_process.beside(quick):
        pass
    assert quick.returncode == 0  # waited for, not stopped
    slow = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    with pytest.raises(ValueError, match="the work failed"):
        with child_process.beside(slow):
            raise ValueError("the work failed")
    assert slow.returncode == -signal.SIGKILL
    with child_process.beside(None):  # no child: the block runs as it is
        pass


def test_patterns_on_the_command_line_start_the_centroids_child_before_their_imports(run, tmp_path, monkeypatch,
                                                                                      capsys):
    """The pictures take the child the command started: one child, no centroids fitted here; with centroids kept,
    no child is started; a command that fails stops its child."""
    from cnnlab.cli import main

    folder = _copy_run(run, tmp_path / "run")
    started = _record_starts(monkeypatch)
    monkeypatch.setattr(pat, "fit_centroids", _fail_here)
    assert main(["patterns", str(folder), "--layer", "Conv2D_2"]) == 0
    assert len(started) == 1 and started[0].returncode == 0 and cache.holds(folder, "centroids", "Conv2D_2")
    first = capsys.readouterr().out
    assert main(["patterns", str(folder), "--layer", "Conv2D_2"]) == 0
    assert len(started) == 1
    assert capsys.readouterr().out == first  # the same accuracies and files
    assert main(["patterns", str(folder), "--layer", "Conv2D_9"]) == 2
    assert len(started) == 2 and started[1].returncode is not None
    assert "no layer named 'Conv2D_9'" in capsys.readouterr().err


def test_evaluate_on_the_command_line_makes_its_test_pass_in_the_child_it_started_first(run, tmp_path,
                                                                                         monkeypatch, capsys):
    """Where no logits are kept the test pass runs in one child started before the command's imports (this
    process's passes fail if asked), and gives what a pass here gives; kept logits start no child; a command
    that fails stops its child; ``evaluation_pictures`` called from Python starts none."""
    from cnnlab import report
    from cnnlab.cli import main

    alone, folder = _copy_run(run, tmp_path / "alone"), _copy_run(run, tmp_path / "run")  # nothing kept
    with monkeypatch.context() as patched:
        patched.setattr(report, "_start_child", lambda *args, **kwargs: None)
        want = report.evaluation_pictures(alone).summary
    started, compute = _record_starts(monkeypatch), SharedPass._compute
    monkeypatch.setattr(SharedPass, "_compute", _fail_here)
    assert main(["evaluate", str(folder)]) == 0
    assert len(started) == 1 and started[0].returncode == 0 and cache.holds(folder, "testpass", "logits-model")
    first = capsys.readouterr().out
    assert f"test: accuracy {want['accuracy']:.4f} ({want['correct']} of {want['images']})" in first
    assert json.loads((folder / "inspect" / "evaluation.json").read_text()) == want
    assert main(["evaluate", str(folder)]) == 0
    assert len(started) == 1 and capsys.readouterr().out == first  # kept: no child, the same lines
    shutil.rmtree(folder / "cache")
    assert main(["evaluate", str(folder), "--mistakes", "0"]) == 2
    assert len(started) == 2 and started[1].returncode == -signal.SIGKILL
    assert "--mistakes 0" in capsys.readouterr().err and not (folder / "cache").exists()
    monkeypatch.setattr(SharedPass, "_compute", compute)
    assert report.evaluation_pictures(_copy_run(run, tmp_path / "python")).summary == want
    assert len(started) == 2  # called from Python: the pass is made here, without a child


def test_a_report_on_the_command_line_takes_the_child_it_started_first(run, tmp_path, monkeypatch, capsys):
    from cnnlab.cli import main

    folder = _copy_run(run, tmp_path / "run")
    started = _record_starts(monkeypatch)
    monkeypatch.setattr(SharedPass, "_compute", _fail_here)
    assert main(["report", str(folder)]) == 0
    assert len(started) == 1 and started[0].returncode is not None
    out = capsys.readouterr().out
    assert "report: class patterns (" in out and out.count("in a process beside the rest") == 2
