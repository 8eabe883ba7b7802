"""The lab's page in a real browser: Playwright for Python driving Debian's chromium (/usr/bin/chromium).

Screenshots of every view go to ``$CNNLAB_SCREENSHOTS`` when set (the README's pictures are made this way:
``CNNLAB_SCREENSHOTS=docs/lab pytest tests/test_lab_browser.py``), else to the test's temporary folder.
"""

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("starlette", reason="the lab needs starlette: pip install 'cnnlab[lab]'")
uvicorn = pytest.importorskip("uvicorn", reason="the lab needs uvicorn: pip install 'cnnlab[lab]'")
sync_api = pytest.importorskip("playwright.sync_api", reason="the browser tests need playwright (the test extra)")

from cnnlab.lab.api import create_app  # noqa: E402
from cnnlab.run import load  # noqa: E402

from conftest import cli_env  # noqa: E402
from lab_helpers import make_root  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
VIEWS = ("runs", "live", "explore", "report")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_root(tmp_path_factory.mktemp("lab"))


@pytest.fixture(scope="module")
def server(root):
    """The lab on a free local port, served by uvicorn in a thread of this process."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(create_app(root), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        assert time.monotonic() < deadline, "the lab did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip("needs Debian's chromium at /usr/bin/chromium (apt-get install chromium; .ci/run installs it)")
    with sync_api.sync_playwright() as p:
        try:
            b = p.chromium.launch(executable_path=str(CHROMIUM))
        except Exception as exc:  # noqa: BLE001 - any failure to start is a reason to skip, given in full
            pytest.skip(f"chromium could not start: {str(exc).splitlines()[0]}")
        yield b
        b.close()


class Watched:
    """A page with its console errors and failed requests recorded."""

    def __init__(self, browser):
        self.page = browser.new_page(viewport={"width": 1280, "height": 900})
        self.problems: list[str] = []
        self.page.on("console", lambda m: self.problems.append(f"console {m.type}: {m.text}")
                     if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        self.page.on("requestfailed", self._failed)
        self.page.on("response", lambda r: self.problems.append(f"HTTP {r.status} {r.url}")
                     if r.status >= 400 else None)

    def _failed(self, request):
        if request.url.endswith("/events") and "ERR_ABORTED" in (request.failure or ""):
            return  # the live stream, closed by the page when it leaves the view
        self.problems.append(f"request failed: {request.url} {request.failure}")


def _shots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("CNNLAB_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _draw_stroke(page, points):
    box = page.locator("canvas#draw").bounding_box()
    page.mouse.move(box["x"] + points[0][0], box["y"] + points[0][1])
    page.mouse.down()
    for x, y in points[1:]:
        page.mouse.move(box["x"] + x, box["y"] + y, steps=3)
    page.mouse.up()


def test_drawing_predicts_what_run_predict_says(server, browser, root):
    w = Watched(browser)
    page = w.page
    page.goto(f"{server}/#explore/tiny")
    page.wait_for_selector("canvas#draw")
    assert page.text_content("#prediction") == "–"
    _draw_stroke(page, [(140, 40 + 10 * i) for i in range(21)])  # a "1"
    page.wait_for_function("window.lab.latencies.length > 0 && document.querySelector('#prediction').textContent !== '–'")
    first = _settled_prediction(page)
    # a "0" over it: the prediction follows the newest drawing
    page.click("#clear")
    _draw_stroke(page, [(140 + 70 * np.sin(t), 140 - 95 * np.cos(t)) for t in np.linspace(0, 2 * np.pi, 40)])
    second = _settled_prediction(page)
    pixels = np.asarray(page.evaluate("window.lab.lastPixels"), dtype=np.uint8)
    assert pixels.shape == (28, 28) and pixels.max() > 200
    run = load(root / "tiny")
    assert second == int(run.predict(pixels[None])[0].argmax())
    assert int(page.text_content("#prediction")) == second
    # the MNIST recipe: ink inside a 20 x 20 box, centre of mass at the middle of 28 x 28
    rows, cols = np.nonzero(pixels)
    assert rows.max() - rows.min() < 21 and cols.max() - cols.min() < 21
    ys, xs = np.indices(pixels.shape)
    mass = pixels.astype(float)
    assert abs((ys * mass).sum() / mass.sum() - 13.5) <= 1 and abs((xs * mass).sum() / mass.sum() - 13.5) <= 1
    assert first is not None
    # every conv and pooling layer drawn
    assert page.locator("#layers canvas").count() == 4
    assert w.problems == []


def _settled_prediction(page):
    """Wait until no request is in flight and the last one answered for the last drawing; return #prediction."""
    page.wait_for_function("window.lab.lastPixels !== null")
    page.wait_for_timeout(300)
    page.wait_for_function("document.querySelector('#prediction').textContent.match(/^[0-9]$/)")
    deadline = time.monotonic() + 20
    while page.evaluate("window.lab.busy()"):
        assert time.monotonic() < deadline
        page.wait_for_timeout(50)
    return int(page.text_content("#prediction"))


def test_every_view_loads_without_errors(server, browser, tmp_path):
    w = Watched(browser)
    page = w.page
    shots = _shots(tmp_path)
    page.goto(f"{server}/#runs")
    page.wait_for_selector("#runs-table tbody tr")
    names = page.locator("#runs-table tbody td").all_text_contents()
    assert "sweep sweep-a" in names and "trial-0001" in names and "tiny" in names
    for trial in ("sweep-a/trial-0000", "sweep-a/trial-0001"):
        page.locator(f"#runs-table input[data-run='{trial}']").check()
    page.wait_for_function("document.querySelector('#compare-note').textContent.includes('differ:')")
    assert page.text_content("#compare-note") == "Config keys that differ: train.seed"
    assert page.locator("#compare-table tbody tr").count() == 2
    seeds = page.locator("#compare-table tbody td").all_text_contents()
    assert seeds[:2] == ["sweep-a/trial-0000", "0"] and seeds[page.locator("#compare-table thead th").count()] \
        == "sweep-a/trial-0001"
    page.screenshot(path=str(shots / "runs.png"))
    page.goto(f"{server}/#explore/tiny")
    page.fill("#pick-index", "3")
    page.click("#pick-load")
    page.wait_for_function("document.querySelector('#picked').textContent.startsWith('test image 3')")
    page.wait_for_function("document.querySelector('#cam-note').textContent.startsWith('Grad-CAM on')")
    page.locator("canvas[data-layer=Conv2D_2]").click(position={"x": 3, "y": 3})
    page.wait_for_function("document.querySelectorAll('#story-top figure').length === 9", timeout=120_000)
    page.click("#pick-mistakes")
    page.wait_for_function("document.querySelectorAll('#mistakes figure').length > 0")
    page.screenshot(path=str(shots / "explore.png"), full_page=True)
    page.goto(f"{server}/#report/tiny")
    page.wait_for_selector("#gallery img")
    page.wait_for_function("[...document.querySelectorAll('#gallery img')].every(i => i.complete && i.naturalWidth)")
    page.screenshot(path=str(shots / "report.png"))
    page.goto(f"{server}/#live/tiny")
    page.wait_for_function("document.querySelector('#live-epoch').textContent === '2'")
    page.screenshot(path=str(shots / "live.png"))
    assert w.problems == []


def test_live_view_follows_a_run_training_in_another_process(server, browser, root, tmp_path):
    out = root / "live"
    child = subprocess.Popen([sys.executable, "-m", "cnnlab", "train", "--preset", "tiny", "--out", str(out),
                              "--epochs", "4", "--set", "data.limit_train=1536", "--no-progress"],
                             env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while not (out / "progress.json").exists():
            assert child.poll() is None, child.stdout.read().decode()
            assert time.monotonic() < deadline, "training did not start"
            time.sleep(0.2)
        w = Watched(browser)
        page = w.page
        page.goto(f"{server}/#live/live")
        seen = []
        while child.poll() is None and time.monotonic() < deadline:
            seen.append(int(page.text_content("#live-epoch") or 0))
            page.wait_for_timeout(250)
        assert child.wait(timeout=60) == 0
        page.wait_for_function("document.querySelector('#live-epoch').textContent === '4'")
        page.wait_for_function("document.querySelector('#live-status').textContent === 'done'")
        assert len(set(seen)) >= 3 and seen == sorted(seen), seen  # it advanced while the run trained
        assert w.problems == []
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()
