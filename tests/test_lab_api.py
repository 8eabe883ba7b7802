"""The lab's JSON API through Starlette's in-process client: every endpoint, bad input, paths, the token."""

import asyncio
import base64
import json
import os
import shutil
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("starlette", reason="the lab needs starlette: pip install 'cnnlab[lab]'")

from starlette.testclient import TestClient  # noqa: E402

from cnnlab import store  # noqa: E402
from cnnlab.callbacks import ProgressFile  # noqa: E402
from cnnlab.errors import CnnlabError  # noqa: E402
from cnnlab.inspection.activations import map_means  # noqa: E402
from cnnlab.inspection.images import ImageSets  # noqa: E402
from cnnlab.inspection.saliency import saliency  # noqa: E402
from cnnlab.lab import runs as lab_runs  # noqa: E402
from cnnlab.lab.api import MAX_BODY, create_app  # noqa: E402
from cnnlab.lab.worker import Busy, Worker  # noqa: E402
from cnnlab.run import load  # noqa: E402

from lab_helpers import make_root  # noqa: E402

LOCAL = "http://127.0.0.1"


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_root(tmp_path_factory.mktemp("lab"))


@pytest.fixture(scope="module")
def client(root):
    with TestClient(create_app(root), base_url=LOCAL) as c:
        yield c


@pytest.fixture(scope="module")
def run(root):
    return load(root / "tiny")


@pytest.fixture(scope="module")
def test_images(run):
    sets = ImageSets(run.config)
    return sets.images("test"), sets.labels("test")


def _error(response, status):
    assert response.status_code == status, response.text
    body = response.json()
    assert list(body) == ["error"] and isinstance(body["error"], str)
    assert body["error"] and "\n" not in body["error"]
    return body["error"]


def _maps(layer):
    c, h, w = layer["shape"]
    raw = np.frombuffer(base64.b64decode(layer["data"]), dtype=np.uint8).reshape(c, h * w).astype(np.float32)
    lo, hi = np.asarray(layer["min"]), np.asarray(layer["max"])
    return (lo[:, None] + raw / 255 * (hi - lo)[:, None]).reshape(c, h, w)


# -- runs -----------------------------------------------------------------------------------------------


def test_runs_lists_every_run_folder_with_trials_grouped(client, run):
    rows = {r["name"]: r for r in client.get("/api/runs").json()}
    assert sorted(rows) == ["starting", "sweep-a/trial-0000", "sweep-a/trial-0001", "tiny"]
    tiny = rows["tiny"]
    assert tiny["epochs"] == 2 and tiny["planned_epochs"] == 2 and tiny["status"] == "done"
    assert tiny["val_accuracy"] == run.history[-1]["val_accuracy"]
    assert tiny["best_val_accuracy"] == max(h["val_accuracy"] for h in run.history)
    assert tiny["group"] is None and rows["sweep-a/trial-0001"]["group"] == "sweep-a"
    assert rows["starting"]["epochs"] == 0 and rows["starting"]["status"] == "stopped"


def test_run_detail_has_config_history_layers_and_progress(client, run):
    d = client.get("/api/runs/tiny").json()
    assert d["config"]["train"]["epochs"] == 2 and d["history"] == run.history
    assert [r["name"] for r in d["layers"]] == run.model.layer_names
    assert d["classes"] == 10
    assert d["progress"]["status"] == "done" and d["progress"]["completed"] == 2


def test_status_of_a_training_a_killed_and_a_pruned_run(root, tmp_path):
    folder = tmp_path / "r"
    shutil.copytree(root / "tiny", folder)
    progress = json.loads((folder / store.PROGRESS).read_text())
    history = store.read_history(folder)
    alive = {**progress, "status": "training", "pid": os.getpid(), "updated": time.time()}
    assert lab_runs.status(folder, history, alive) == "training"
    assert lab_runs.status(folder, lambda: pytest.fail("read the history"), alive) == "training"  # not needed
    unsaid = {k: v for k, v in progress.items() if k != "status"}
    assert lab_runs.status(folder, lambda: history, unsaid) == "done"  # the history tells: 2 of 2 epochs
    assert lab_runs.status(folder, history, {**alive, "pid": 2 ** 22 + 12345}) == "stopped"  # no such process
    assert lab_runs.status(folder, history, {**alive, "updated": time.time() - 3600}) == "stopped"
    (folder / "trial.json").write_text(json.dumps({"state": "PRUNED"}))
    assert lab_runs.status(folder, history, alive) == "pruned"



def test_compare_gives_the_table_of_cnnlab_compare_and_the_differing_keys(client, root):
    from cnnlab.compare import compare

    body = client.get("/api/compare?runs=sweep-a/trial-0000,sweep-a/trial-0001").json()
    assert body["differing_keys"] == ["train.seed"] and body["skipped"] == []
    expected = compare([root / "sweep-a" / "trial-0000", root / "sweep-a" / "trial-0001"])
    assert [r["run"] for r in body["rows"]] == ["sweep-a/trial-0000", "sweep-a/trial-0001"]
    assert [r["train.seed"] for r in body["rows"]] == [0, 7]
    for got, want in zip(body["rows"], expected):
        assert {k: v for k, v in got.items() if k != "run"} == {k: v for k, v in want.items() if k != "run"}
    same = client.get("/api/compare", params={"runs": ["tiny", "sweep-a/trial-0000"]}).json()
    assert same["differing_keys"] == [] and [r["run"] for r in same["rows"]] == ["tiny", "sweep-a/trial-0000"]


@pytest.mark.parametrize("query, status, words", [
    ("", 400, "give the runs to compare"), ("?runs=nope,tiny", 404, "nope"),
    ("?runs=../tiny,tiny", 404, ""), ("?runs=starting,tiny", 409, "starting")])
def test_compare_refuses_bad_run_lists_in_one_line(client, query, status, words):
    assert words in _error(client.get(f"/api/compare{query}"), status)

# -- predict --------------------------------------------------------------------------------------------


def test_predict_equals_run_predict_and_returns_every_map(client, run, test_images):
    images, _ = test_images
    rng = np.random.default_rng(0)
    cases = [images[i] for i in (0, 7, 19)] + [rng.integers(0, 256, (28, 28), dtype=np.uint8)]
    for pixels in cases:
        body = client.post("/api/runs/tiny/predict", json={"pixels": pixels.tolist()}).json()
        expected = run.predict(pixels[None])[0]
        np.testing.assert_allclose(body["probabilities"], expected, atol=1e-5, rtol=0)
        assert body["predicted"] == int(expected.argmax())
        assert list(body["layers"]) == ["Conv2D_1", "Max_Pool_1", "Conv2D_2", "Max_Pool_2"]
        for name, layer in body["layers"].items():
            assert tuple(layer["shape"]) == run.model.output_shapes[name]
            true = run.activations(name, pixels[None])[0]
            step = (np.asarray(layer["max"]) - np.asarray(layer["min"]))[:, None, None] / 255
            assert np.all(np.abs(_maps(layer) - true) <= step / 2 + 1e-6)  # one byte per value, rounded


@pytest.mark.parametrize("body, status, words", [
    (b"{bad json", 400, "not valid JSON"),
    (b"[1, 2]", 400, "must be a JSON object"),
    (b'{"pixel": []}', 400, "has no 'pixels'"),
    (json.dumps({"pixels": [[0] * 28] * 27}).encode(), 400, "28 rows"),
    (json.dumps({"pixels": [[0] * 28] * 27 + [[0] * 27]}).encode(), 400, "row 27 must hold 28"),
    (json.dumps({"pixels": [[0] * 28] * 27 + [[0] * 27 + [256]]}).encode(), 400, "pixels[27][27] = 256"),
    (json.dumps({"pixels": [[-1] + [0] * 27] + [[0] * 28] * 27}).encode(), 400, "pixels[0][0] = -1"),
    (json.dumps({"pixels": [[0.5] + [0] * 27] + [[0] * 28] * 27}).encode(), 400, "pixels[0][0] = 0.5"),
    (json.dumps({"pixels": [[True] + [0] * 27] + [[0] * 28] * 27}).encode(), 400, "pixels[0][0] = True"),
    (json.dumps({"pixels": "abc"}).encode(), 400, "got str"),
    (b'{"pixels": [' + b"0," * MAX_BODY + b"0]}", 413, f"larger than {MAX_BODY} bytes"),
])
def test_predict_refuses_bad_input_with_one_line_and_keeps_serving(client, body, status, words):
    message = _error(client.post("/api/runs/tiny/predict", content=body,
                                 headers={"Content-Type": "application/json"}), status)
    assert words in message
    assert client.post("/api/runs/tiny/predict", json={"pixels": [[0] * 28] * 28}).status_code == 200


def test_a_body_over_the_cap_is_refused_even_without_a_length(client):
    def chunks():
        for _ in range(MAX_BODY // 1000 + 2):
            yield b" " * 1000

    _error(client.post("/api/runs/tiny/predict", content=chunks()), 413)


# -- Grad-CAM, images, mistakes, maps ---------------------------------------------------------------------


def test_gradcam_for_the_predicted_and_a_chosen_class(client, run, test_images):
    images, _ = test_images
    pixels = images[3]
    body = client.post("/api/runs/tiny/gradcam", json={"pixels": pixels.tolist()}).json()
    predicted = int(run.predict(pixels[None])[0].argmax())
    assert body["target"] == predicted and body["layer"] == "Conv2D_2"
    chosen = (predicted + 1) % 10
    body = client.post("/api/runs/tiny/gradcam", json={"pixels": pixels.tolist(), "class": chosen,
                                                        "layer": "Conv2D_1"}).json()
    expected = saliency(run.model, run.prepare(pixels[None]), [chosen], "Conv2D_1")
    assert body["target"] == chosen and body["layer"] == "Conv2D_1"
    assert np.abs(_maps(body["grad_cam"]) - expected.grad_cam).max() <= expected.grad_cam.max() / 255 + 1e-6


@pytest.mark.parametrize("extra, status, words", [
    ({"class": 10}, 400, "class 10 is out of range"),
    ({"class": "3"}, 400, "class must be a whole number"),
    ({"layer": "Max_Pool_1"}, 400, "Grad-CAM needs a conv layer"),
    ({"layer": "Conv2D_9"}, 404, "no conv or pooling layer named 'Conv2D_9'"),
    ({"layer": 3}, 400, "layer must be a layer name"),
])
def test_gradcam_refuses_bad_input(client, extra, status, words):
    assert words in _error(client.post("/api/runs/tiny/gradcam", json={"pixels": [[0] * 28] * 28, **extra}), status)


def test_images_by_index_and_by_class(client, run, test_images):
    images, labels = test_images
    body = client.get("/api/runs/tiny/images?index=5").json()
    assert body["index"] == 5 and body["label"] == labels[5]
    assert np.array_equal(np.asarray(body["pixels"], dtype=np.uint8), images[5])
    assert body["predicted"] == int(run.predict(images[5:6])[0].argmax())
    sevens = np.flatnonzero(labels == 7)
    body = client.get("/api/runs/tiny/images?label=7&nth=2").json()
    assert body["index"] == sevens[2] and body["label"] == 7


@pytest.mark.parametrize("query, words", [
    ("index=256", "index 256 is out of range: the test set of this run has 256 images"),
    ("index=-1", "index -1 is out of range"),
    ("index=abc", "index='abc': expected a whole number"),
    ("", "give index=N, or label=C"),
    ("label=11", "label 11: the test set has no image of that class"),
])
def test_images_refuse_bad_queries(client, query, words):
    assert words in _error(client.get(f"/api/runs/tiny/images?{query}"), 400)


def test_mistakes_are_wrong_and_most_confident_first(client, run, test_images):
    images, labels = test_images
    body = client.get("/api/runs/tiny/mistakes?count=5").json()
    probabilities = run.predict(images)
    predicted = probabilities.argmax(axis=1)
    assert body["images"] == 256 and body["wrong"] == int((predicted != labels).sum())
    rows = body["mistakes"]
    assert len(rows) == 5 and all(r["label"] != r["predicted"] for r in rows)
    confidences = [r["probability"] for r in rows]
    assert confidences == sorted(confidences, reverse=True)
    wrong = predicted != labels
    assert confidences[0] == pytest.approx(probabilities[wrong].max(axis=1).max(), abs=1e-6)
    assert "count 0: give 1..200" in _error(client.get("/api/runs/tiny/mistakes?count=0"), 400)


def test_map_story_pattern_top_images_and_class_means(client, root, run, test_images):
    images, labels = test_images
    body = client.get("/api/runs/tiny/maps/Conv2D_1/2").json()
    means = map_means(run.model, images, "Conv2D_1", prepare=run.prepare)[:, 2]
    top = np.argsort(-means, kind="stable")[:9]
    assert [t["index"] for t in body["top"]] == top.tolist()
    np.testing.assert_allclose([t["activation"] for t in body["top"]], means[top], rtol=1e-5)
    assert np.array_equal(np.frombuffer(base64.b64decode(body["top"][0]["pixels"]), np.uint8).reshape(28, 28),
                          images[top[0]])
    expected = [means[labels == c].mean() for c in range(10)]
    np.testing.assert_allclose(body["class_means"], expected, rtol=1e-5)
    cache = root / "tiny" / "inspect" / "filters_Conv2D_1.npz"
    assert cache.is_file() and len(base64.b64decode(body["pattern"]["pixels"])) == 784
    stamp = cache.stat().st_mtime_ns
    again = client.get("/api/runs/tiny/maps/Conv2D_1/3").json()  # another map of the layer: from the cache
    assert cache.stat().st_mtime_ns == stamp and again["pattern"]["steps"] == body["pattern"]["steps"]


@pytest.mark.parametrize("path, words", [
    ("maps/Dense_1/0", "no conv or pooling layer named 'Dense_1'"),
    ("maps/Conv2D_1/4", "map 4 is out of range: layer Conv2D_1 has 4 maps"),
    ("maps/Conv2D_1/x", "map 'x': a map is a number"),
])
def test_map_story_refuses_unknown_layers_and_maps(client, path, words):
    assert words in _error(client.get(f"/api/runs/tiny/{path}"), 404)


def test_files_list_and_serve_the_runs_pictures(client, root):
    listed = {f["path"] for f in client.get("/api/runs/tiny/files").json()}
    assert {"curves.png", "config.toml", "checkpoint.json"} <= listed
    assert not any(p.endswith(".safetensors") for p in listed)
    r = client.get("/api/runs/tiny/files/curves.png")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.content == (root / "tiny" / "curves.png").read_bytes()
    _error(client.get("/api/runs/tiny/files/weights.safetensors"), 404)


# -- paths, errors, token -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def outside(root, tmp_path_factory):
    """A real run folder and a secret file outside the root, each reachable through a symlink inside it."""
    elsewhere = tmp_path_factory.mktemp("outside")
    shutil.copytree(root / "tiny", elsewhere / "run")
    (elsewhere / "secret.png").write_bytes(b"secret")
    (root / "escape").symlink_to(elsewhere / "run")
    (root / "tiny" / "leak.png").symlink_to(elsewhere / "secret.png")
    yield elsewhere
    (root / "escape").unlink()
    (root / "tiny" / "leak.png").unlink()


@pytest.mark.parametrize("path", [
    "/api/runs/%2e%2e", "/api/runs/%2e%2e/root/tiny", "/api/runs/..%2ftiny", "/api/runs/%2e%2e%2f%2e%2e%2fetc",
    "/api/runs/%252e%252e%252ftiny", "/api/runs/%2fetc%2fpasswd", "/api/runs//etc/passwd", "/api/runs/tiny%2f..",
    "/api/runs/%2e", "/api/runs/tiny%2f.%2f", "/api/runs/..%5ctiny", "/api/runs/tiny%00", "/api/runs/escape",
    "/api/runs/escape/files/curves.png", "/api/runs/tiny/files/leak.png", "/api/runs/tiny/files/..%2fescape",
    "/api/runs/tiny/files/%2e%2e%2f%2e%2e%2fescape%2fconfig.toml", "/api/runs/tiny/files/%2fetc%2fpasswd",
    "/api/runs/tiny/files/inspect%2f..%2f..%2ftiny%2fcurves.png", "/api/runs/sweep-a",
])
def test_paths_outside_the_root_or_not_runs_are_404(client, outside, path):
    response = client.get(path)
    _error(response, 404)
    assert b"secret" not in response.content


def test_symlinks_out_of_the_root_are_not_listed(client, outside):
    assert "escape" not in {r["name"] for r in client.get("/api/runs").json()}


def test_posting_to_a_run_outside_the_root_is_404(client, outside):
    _error(client.post("/api/runs/escape/predict", json={"pixels": [[0] * 28] * 28}), 404)
    _error(client.post("/api/runs/%2e%2e%2foutside/predict", json={"pixels": [[0] * 28] * 28}), 404)


def test_unknown_routes_and_methods_answer_json(client):
    assert "no such address" in _error(client.get("/api/nothing"), 404)
    assert "POST is not allowed" in _error(client.post("/api/runs"), 405)
    assert "DELETE is not allowed" in _error(client.delete("/api/runs/tiny"), 405)
    assert "no file 'x.js'" in _error(client.get("/static/x.js"), 404)


def test_a_run_whose_weights_are_not_written_yet_is_409(client):
    assert "no weights yet" in _error(client.post("/api/runs/starting/predict", json={"pixels": [[0] * 28] * 28}),
                                      409)


def test_page_and_static_files(client):
    page = client.get("/")
    assert page.status_code == 200 and 'canvas id="draw"' in page.text and 'id="prediction"' in page.text
    assert 'id="clear"' in page.text and "http" not in page.text.replace("http-equiv", "")  # nothing remote
    for name, kind in (("app.js", "text/javascript"), ("style.css", "text/css")):
        r = client.get(f"/static/{name}")
        assert r.status_code == 200 and r.headers["content-type"].startswith(kind)
        assert "://" not in r.text  # no CDN, no remote font


def test_the_token_guards_every_request(root):
    with TestClient(create_app(root, token="s3cret"), base_url="http://10.1.2.3:8350") as c:
        assert "access token" in _error(c.get("/api/runs"), 401)
        _error(c.get("/"), 401)
        _error(c.get("/api/runs?token=wrong"), 401)
        _error(c.get("/api/runs", headers={"Authorization": "Bearer wrong"}), 401)
        assert c.get("/api/runs", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        page = c.get("/?token=s3cret")
        assert page.status_code == 200 and "cnnlab_lab_token=s3cret" in page.headers["set-cookie"]
        assert c.get("/api/runs").status_code == 200  # the cookie the page got


def test_without_a_token_only_local_host_names_are_answered(root):
    with TestClient(create_app(root), base_url="http://evil.example:8350") as c:
        assert "refused" in _error(c.get("/api/runs"), 403)
    with TestClient(create_app(root), base_url="http://localhost:8350") as c:
        assert c.get("/api/runs").status_code == 200


def test_never_a_500_while_a_run_folder_is_being_written(root, tmp_path):
    """A writer rewrites the files of a run in place (not atomically) while requests read it."""
    lab = tmp_path / "root"
    folder = lab / "busy"
    shutil.copytree(root / "tiny", folder)
    paths = (store.checkpoint_path(folder, store.HISTORY_JSON), folder / store.PROGRESS, folder / store.MODEL,
             folder / store.CONFIG, store.checkpoint_path(folder, store.WEIGHTS), folder / store.MANIFEST)
    files = {path: path.read_bytes() for path in paths}
    stop = threading.Event()

    def writer():
        while not stop.is_set():
            for path, data in files.items():
                path.unlink(missing_ok=True)
                with open(path, "wb") as f:
                    f.write(data[:len(data) // 2])
                    f.flush()
                    time.sleep(0.001)
                    f.write(data[len(data) // 2:])

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    statuses = set()
    try:
        with TestClient(create_app(lab), base_url=LOCAL, raise_server_exceptions=True) as c:
            deadline = time.monotonic() + 4
            while time.monotonic() < deadline:
                for method, path, body in (("GET", "/api/runs", None), ("GET", "/api/runs/busy", None),
                                           ("POST", "/api/runs/busy/predict", {"pixels": [[0] * 28] * 28}),
                                           ("GET", "/api/runs/busy/files", None)):
                    r = c.request(method, path, json=body)
                    statuses.add(r.status_code)
                    assert r.status_code in (200, 404, 409), r.text
                    if r.status_code != 200:
                        _error(r, r.status_code)
    finally:
        stop.set()
        thread.join()
    assert 200 in statuses


# -- the progress file and the worker -------------------------------------------------------------------


def test_progress_file_is_rewritten_at_most_once_per_interval(tmp_path):
    import torch

    trainer = SimpleNamespace(state=SimpleNamespace(epoch=0), batches_per_epoch=10)
    cb = ProgressFile(tmp_path / "progress.json", total_epochs=3, every=3600)
    cb.trainer = trainer
    cb.on_train_begin()
    cb.on_epoch_begin(1)
    logs = SimpleNamespace(running=lambda: (0.5, 0.75))
    read = lambda: json.loads((tmp_path / "progress.json").read_text())  # noqa: E731
    cb.on_batch_end(3, logs)
    assert read()["batch"] == 0 and read()["epoch"] == 0  # within the interval: not rewritten
    cb.last -= 3600
    cb.on_batch_end(4, logs)
    assert (read()["epoch"], read()["batch"], read()["loss"], read()["accuracy"]) == (1, 4, 0.5, 0.75)
    trainer.state.epoch = 1
    cb.on_epoch_end(1, {"loss": 0.4, "accuracy": 0.8})
    assert read()["completed"] == 1 and read()["loss"] == 0.4
    cb.on_train_end()
    assert read()["status"] == "stopped"  # 1 of 3 epochs
    trainer.state.epoch = 3
    cb.on_train_end()
    assert read()["status"] == "done" and read()["pid"] == os.getpid()
    del torch


def test_worker_refuses_when_its_queue_is_full():
    release = threading.Event()
    worker = Worker(size=1)

    async def scenario():
        first = asyncio.ensure_future(worker.call(release.wait))
        await asyncio.sleep(0.05)  # the thread took the first job; the queue is empty again
        second = asyncio.ensure_future(worker.call(lambda: 2))
        await asyncio.sleep(0)
        with pytest.raises(Busy, match="busy"):
            await worker.call(lambda: 3)
        release.set()
        return await first, await second

    assert asyncio.run(scenario()) == (True, 2)
    worker.close()


def test_cli_lab_refuses_a_missing_root_and_a_bad_port(tmp_path, capsys):
    from cnnlab.cli import main

    assert main(["lab", "--root", str(tmp_path / "nope")]) == 2
    assert "--root" in capsys.readouterr().err
    assert main(["lab", "--root", str(tmp_path), "--port", "70000"]) == 2
    err = capsys.readouterr().err
    assert "--port 70000" in err and len(err.strip().splitlines()) == 1


def test_cli_lab_says_in_one_line_when_the_port_is_taken(tmp_path, capsys):
    import socket

    from cnnlab.cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert main(["lab", "--root", str(tmp_path), "--port", str(taken.getsockname()[1])]) == 2
    err = capsys.readouterr().err
    assert "cannot serve on 127.0.0.1:" in err and "choose another --port" in err
    assert len(err.strip().splitlines()) == 1


def test_lab_serves_on_the_device_it_is_given_and_refuses_an_unknown_one(root, run, test_images, tmp_path, capsys):
    from cnnlab.cli import main

    pixels = test_images[0][3]
    with TestClient(create_app(root, device="cpu"), base_url=LOCAL) as cpu_client:
        body = cpu_client.post("/api/runs/tiny/predict", json={"pixels": pixels.tolist()}).json()
    np.testing.assert_allclose(body["probabilities"], run.predict(pixels[None])[0], atol=1e-5, rtol=0)
    with pytest.raises(CnnlabError, match=r"--device: 'tpu' is not one of auto, cpu, cuda"):
        create_app(root, device="tpu")
    assert main(["lab", "--root", str(tmp_path), "--device", "gpu"]) == 2
    err = capsys.readouterr().err
    assert "--device" in err and "cuda" in err and len(err.strip().splitlines()) == 1
