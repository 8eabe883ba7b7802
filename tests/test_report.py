"""The HTML report: self-contained, and checked in a real browser (headless Chromium over its DevTools pipe)."""

import base64
import io
import json
import os
import re
import select
import shlex
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

import cnnlab
from cnnlab.cli import main
from cnnlab.report import write_report

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--remote-debugging-pipe"]


@pytest.fixture(scope="module")
def report(real_mnist, tmp_path_factory):
    run = cnnlab.train("tiny", out=tmp_path_factory.mktemp("report") / "tiny", epochs=2, echo=None)
    lines = []
    path = write_report(run.path, echo=lines.append)
    return path, lines


def test_report_is_one_self_contained_page(report):
    path, lines = report
    assert path == path.parent / "report.html" and lines[-1].startswith(f"report: {path}")
    page = path.read_text()
    sources = re.findall(r"<img src='([^']*)'", page)
    assert len(sources) >= 10 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert not re.search(r"(src|href)=['\"](?!data:)", page)  # nothing to fetch: no files, no network
    for heading in ("Run", "Layers", "Evaluation on the test set", "Activations of test image 19", "Saliency",
                    "Filter patterns", "Class patterns of Conv2D_2"):
        assert f">{heading}</h" in page
    assert re.search(r"Conv2D_1 +Conv2D +\(4, 26, 26\)", page)  # the layer table
    assert "[optimizer]" in page  # the config
    for name in ("activations_Conv2D_1_test19.png", "activations_Max_Pool_2_test19.png", "filters_Conv2D_2.npz",
                 "evaluation.json", "patterns_Conv2D_2_class9.png", "saliency_test19.npz"):
        assert (path.parent / "inspect" / name).is_file()


def test_report_command(report, capsys):
    path, _ = report
    assert main(["report", str(path.parent)]) == 0
    assert f"report: {path}" in capsys.readouterr().out


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium "
                                                  "(apt-get install chromium; .ci/run installs it)")
def test_report_loads_in_headless_chromium(report, tmp_path):
    path, _ = report
    images, errors, screenshot = browse(path.as_uri(), tmp_path / "profile")
    assert errors == []
    assert len(images) == path.read_text().count("<img ")
    assert [i for i in images if not (i["complete"] and i["naturalWidth"] > 0)] == []
    from PIL import Image

    shot = Image.open(io.BytesIO(screenshot))
    (tmp_path / "report.png").write_bytes(screenshot)
    assert shot.width >= 1000 and shot.height > 3000  # the whole page, not just the first screen
    assert np.asarray(shot.convert("L")).std() > 10  # pictures and text, not a blank page


def test_the_browser_check_sees_broken_pages(tmp_path):
    if not CHROMIUM.exists():
        pytest.skip("needs Debian's chromium at /usr/bin/chromium")
    page = tmp_path / "bad.html"
    page.write_text("<html><body><img src='missing.png'><script>console.error('boom')</script></body></html>")
    images, errors, _ = browse(page.as_uri(), tmp_path / "profile")
    assert images == [{"alt": "", "complete": True, "naturalWidth": 0}]
    kinds = {e["method"] for e in errors}
    assert kinds == {"Log.entryAdded", "Runtime.consoleAPICalled"}


# ---------------------------------------------------------------------------------------------------------
# A minimal DevTools-protocol client over --remote-debugging-pipe: JSON messages ending in NUL, commands on the
# browser's fd 3, answers and events on its fd 4. No websocket library and no downloaded browser needed.


def browse(url: str, profile: Path) -> tuple[list[dict], list[dict], bytes]:
    """Open ``url``; return every image's load state, the console/network errors and a full-page screenshot."""
    browser = _Browser(profile)
    try:
        target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            browser.send(f"{domain}.enable", session=session)
        browser.send("Emulation.setDeviceMetricsOverride",
                     {"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": False}, session=session)
        browser.send("Page.navigate", {"url": url}, session=session)
        browser.wait_for("Page.loadEventFired")
        script = ("JSON.stringify(Array.from(document.images, "
                  "i => ({alt: i.alt, complete: i.complete, naturalWidth: i.naturalWidth})))")
        images = json.loads(browser.send("Runtime.evaluate", {"expression": script, "returnByValue": True},
                                         session=session)["result"]["value"])
        size = browser.send("Page.getLayoutMetrics", session=session)["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
        shot = browser.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip},
                            session=session, timeout=120)["data"]
        return images, [e for e in browser.events if _is_error(e)], base64.b64decode(shot)
    finally:
        browser.close()


def _is_error(event: dict) -> bool:
    method, params = event.get("method"), event.get("params", {})
    return (method == "Runtime.exceptionThrown"
            or (method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"))
            or (method == "Log.entryAdded" and params["entry"]["level"] == "error"))


class _Browser:
    def __init__(self, profile: Path):
        to_browser, self._write = os.pipe()
        self._read, from_browser = os.pipe()
        args = " ".join(shlex.quote(a) for a in [str(CHROMIUM), *CHROMIUM_FLAGS, f"--user-data-dir={profile}"])
        self.proc = subprocess.Popen(["bash", "-c", f"exec {args} 3<&{to_browser} 4>&{from_browser}"],
                                     pass_fds=(to_browser, from_browser), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        os.close(to_browser)
        os.close(from_browser)
        self._buffer, self._id, self.events = b"", 0, []

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 30) -> dict:
        self._id += 1
        message = {"id": self._id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._write, json.dumps(message).encode() + b"\0")
        while True:
            answer = self._next(timeout)
            if answer.get("id") == self._id:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer["result"]
            self.events.append(answer)

    def wait_for(self, event: str, timeout: float = 30) -> dict:
        while True:
            message = self._next(timeout)
            self.events.append(message)
            if message.get("method") == event:
                return message

    def _next(self, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._read], [], [], left)[0]:
                raise TimeoutError(f"chromium did not answer within {timeout} s")
            chunk = os.read(self._read, 1 << 20)
            if not chunk:
                raise RuntimeError(f"chromium exited: {self.proc.stderr.read().decode(errors='replace')[-2000:]}")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=5)
        except (OSError, RuntimeError, TimeoutError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stderr.close()
        os.close(self._write)
        os.close(self._read)


def test_a_series_of_map_grids_laid_out_once_gives_the_pixels_of_a_figure_each():
    """The class-pattern pictures share one laid-out figure; each must equal a picture made on its own."""
    from PIL import Image

    from cnnlab import plots

    rng = np.random.default_rng(0)
    maps, images = rng.random((3, 12, 5, 5)), rng.integers(0, 256, (3, 28, 28))
    titles = [f"class {k} ({10 * k + 1} images)" for k in range(3)]
    series = list(plots.activation_grid_pngs(zip(maps, images, titles), 0.0, 1.0, cols=4))
    assert len(series) == 3
    for k, png in enumerate(series):
        alone = plots.png_bytes(plots.activation_grid_figure(maps[k], images[k], titles[k], 4, vmin=0.0, vmax=1.0))
        a, b = (np.asarray(Image.open(io.BytesIO(data))) for data in (png, alone))
        assert a.shape == b.shape and np.array_equal(a, b), k
    assert not np.array_equal(*(np.asarray(Image.open(io.BytesIO(d))) for d in series[:2]))  # the data did change


@pytest.mark.parametrize("shape, cols, with_images", [((128, 3, 3), 16, True), ((24, 11, 11), 8, False)])
def test_a_series_repeats_the_drawing_of_its_unchanging_parts_to_the_same_pixels(shape, cols, with_images,
                                                                                 monkeypatch):
    """After the first picture only the two images and the title are drawn anew (the map labels, grid lines,
    colour bar and axes repeat the first picture's renderer calls), and every picture is still, pixel for
    pixel, the figure drawn on its own; the pictures differ where the classes' maps do."""
    from matplotlib.text import Text

    from cnnlab import plots

    rng = np.random.default_rng(1)
    maps = rng.random((4, *shape))
    images = rng.integers(0, 256, (4, 28, 28)) if with_images else [None] * 4
    maps[2] = maps[1]  # the same maps under another title: only the title (and input) may differ
    titles = [f"Conv2D_3: average maps of class {k}" for k in range(4)]
    texts, labelled = [], []
    draw, draw_labels = Text.draw, plots._CellLabels.draw
    monkeypatch.setattr(Text, "draw", lambda text, renderer: texts.append(text.get_text()) or draw(text, renderer))
    monkeypatch.setattr(plots._CellLabels, "draw",
                        lambda labels, renderer: labelled.append(labels) or draw_labels(labels, renderer))
    series = plots.activation_grid_pngs(zip(maps, images, titles), 0.0, 1.0, cols, "magma", "mean", "average")
    pictures = [next(series)]
    assert len(labelled) == 1  # the first picture draws the map labels; the others repeat its calls
    first = list(texts)  # (it may draw the next picture too: one is encoded while the next is drawn)
    texts.clear()
    pictures += list(series)
    assert len(pictures) == 4 and len(labelled) == 1
    assert all(text in titles for text in texts)  # later pictures draw only their titles as text...
    assert [text for text in first + texts if text in titles] == titles  # ...each once, in turn
    monkeypatch.setattr(Text, "draw", draw)
    monkeypatch.setattr(plots._CellLabels, "draw", draw_labels)
    decoded = [_pixels(png) for png in pictures]
    for k, pixels in enumerate(decoded):
        alone = plots.png_bytes(plots.activation_grid_figure(maps[k], images[k], titles[k], cols, "magma",
                                                             0.0, 1.0, "mean", "average"))
        assert np.array_equal(pixels, _pixels(alone)), k
    assert (np.abs(decoded[0].astype(int) - decoded[1]) > 40).sum() > 1000  # other maps: many pixels far apart
    changed = np.argwhere((decoded[1] != decoded[2]).any(axis=2))[:, 0]  # the rows of the pixels that differ
    assert len(changed) and (with_images or changed.max() < 0.15 * len(decoded[1]))  # same maps: the title only


def test_a_series_under_other_savefig_settings_still_gives_the_pictures_of_png_bytes(monkeypatch):
    import matplotlib

    from cnnlab import plots

    rng = np.random.default_rng(2)
    maps, images = rng.random((2, 12, 5, 5)), rng.integers(0, 256, (2, 28, 28))
    monkeypatch.setitem(matplotlib.rcParams, "savefig.facecolor", "red")
    series = list(plots.activation_grid_pngs(zip(maps, images, "ab"), 0.0, 1.0, cols=4))
    for k, png in enumerate(series):
        alone = plots.png_bytes(plots.activation_grid_figure(maps[k], images[k], "ab"[k], 4, vmin=0.0, vmax=1.0))
        assert np.array_equal(_pixels(png), _pixels(alone)), k
        assert tuple(_pixels(png)[0, 0]) == (255, 0, 0, 255)


def test_a_heat_map_drawn_before_its_title_is_known_gives_the_pixels_of_the_figure_drawn_after(monkeypatch):
    """``cnnlab patterns`` draws its heat map while the centroids are computed and titles it after: the PNG
    must be the figure drawn with its final title, and finishing it draws the title alone as text."""
    from matplotlib.text import Text

    from cnnlab import plots

    means = np.random.default_rng(3).random((10, 64))
    fig = plots.class_heatmap_figure(means, "Conv2D_3: nearest class pattern 0.0000", "magma")
    finish = plots.png_with_title_later(fig, fig.axes[0].title)
    texts = []
    draw = Text.draw
    monkeypatch.setattr(Text, "draw", lambda text, renderer: texts.append(text.get_text()) or draw(text, renderer))
    late = finish("Conv2D_3: nearest class pattern 0.9111")
    assert texts == ["Conv2D_3: nearest class pattern 0.9111"]
    monkeypatch.setattr(Text, "draw", draw)
    alone = plots.png_bytes(plots.class_heatmap_figure(means, "Conv2D_3: nearest class pattern 0.9111", "magma"))
    placeholder = plots.png_bytes(plots.class_heatmap_figure(means, "Conv2D_3: nearest class pattern 0.0000",
                                                             "magma"))
    assert np.array_equal(_pixels(late), _pixels(alone))
    assert not np.array_equal(_pixels(late), _pixels(placeholder))  # the title did change
    assert np.array_equal(_pixels(finish("Conv2D_3: nearest class pattern 0.0000")), _pixels(placeholder))


def test_a_heat_map_titled_later_under_other_savefig_settings_is_drawn_whole(monkeypatch):
    import matplotlib

    from cnnlab import plots

    means = np.random.default_rng(4).random((3, 12))
    monkeypatch.setitem(matplotlib.rcParams, "savefig.facecolor", "red")
    fig = plots.class_heatmap_figure(means, "before")
    late = plots.png_with_title_later(fig, fig.axes[0].title)("after")
    assert np.array_equal(_pixels(late), _pixels(plots.png_bytes(plots.class_heatmap_figure(means, "after"))))
    assert tuple(_pixels(late)[0, 0]) == (255, 0, 0, 255)


def _pixels(png: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGBA"))  # png_bytes writes opaque pictures as RGB


def _every_figure(rng: np.random.Generator) -> dict:
    from cnnlab import plots

    history = [dict(epoch=e, step=10 * e, lr=1e-3, accuracy=0.9 + e / 100, val_accuracy=0.91, loss=0.3 / e,
                    val_loss=0.2) for e in range(1, 4)]
    return {"curves": lambda: plots.curves_figure(history),
            "grid": lambda: plots.activation_grid_figure(rng.random((20, 5, 5)), rng.integers(0, 256, (28, 28)), "g"),
            "bars": lambda: plots.activation_bars_figure(rng.random(30), rng.integers(0, 256, (28, 28)), "b"),
            "filters": lambda: plots.filter_grid_figure(rng.random((12, 28, 28)) * 255, range(12), rng.random(12) * 20),
            "heat map": lambda: plots.class_heatmap_figure(rng.random((10, 24)), "h"),
            "confusion": lambda: plots.confusion_figure(rng.integers(0, 900, (10, 10)), "c", [f"c{k}" for k in range(10)]),
            "gallery": lambda: plots.gallery_figure(rng.integers(0, 256, (5, 28, 28)), list("abcde"), "m"),
            "saliency": lambda: plots.saliency_figure(rng.integers(0, 256, (28, 28)), rng.random((28, 28)),
                                                      rng.random((28, 28)), "s", "Conv2D_2")}


@pytest.mark.parametrize("kind", list(_every_figure(np.random.default_rng(0))))
def test_png_bytes_draws_each_figure_once_to_the_pixels_of_savefig(kind, monkeypatch):
    """savefig lays a constrained figure out in a first draw that paints nothing; png_bytes draws once."""
    from matplotlib.figure import Figure

    from cnnlab import plots

    make = _every_figure(np.random.default_rng(0))[kind]
    buf = io.BytesIO()
    make().savefig(buf, format="png", dpi=100)
    draws = []
    draw = Figure.draw
    monkeypatch.setattr(Figure, "draw", lambda fig, renderer: draws.append(fig) or draw(fig, renderer))
    fast = plots.png_bytes(_every_figure(np.random.default_rng(0))[kind]())
    assert len(draws) == 1
    assert np.array_equal(_pixels(fast), _pixels(buf.getvalue()))
    assert len(fast) < 1.5 * len(buf.getvalue())  # compressed all the same (level 1: 0-20% more bytes)


def test_png_bytes_keeps_savefig_where_the_settings_ask_for_more(monkeypatch):
    import matplotlib

    from cnnlab import plots

    fig = plots.gallery_figure(np.zeros((2, 28, 28)), ["a", "b"], "t")
    monkeypatch.setitem(matplotlib.rcParams, "savefig.facecolor", "red")
    assert tuple(_pixels(plots.png_bytes(fig))[0, 0]) == (255, 0, 0, 255)  # the corner: figure background
    assert _pixels(plots.png_bytes(fig, dpi=50)).shape[:2] == (int(fig.get_figheight() * 50),
                                                               int(fig.get_figwidth() * 50))


@pytest.mark.parametrize("kind", ["activations", "filters", "confusion"])
def test_labels_inside_the_axes_are_left_out_of_the_layout_without_changing_a_pixel(kind):
    """The per-map labels and the confusion counts are not measured by the layout engine (the largest part of
    its time): they lie inside their axes, so measuring them changes nothing. Widest realistic labels here."""
    from cnnlab import plots

    maps, patterns = np.random.default_rng(0).random((128, 3, 3)), np.random.default_rng(0).random((64, 28, 28))
    fashion = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
               "Ankle boot"]
    make = {"activations": lambda: plots.activation_grid_figure(maps, None, "maps", cols=8),
            "filters": lambda: plots.filter_grid_figure(patterns * 255, range(64), np.full(64, 12345.0)),
            "confusion": lambda: plots.confusion_figure(np.full((10, 10), 9999), "c", fashion)}[kind]
    fast, measured = make(), make()
    inside = [t for ax in measured.axes for t in [*ax.texts, *ax.artists]]  # the counts; the maps' labels
    assert len(inside) >= (64 if kind == "confusion" else 1) and not any(t.get_in_layout() for t in inside)
    for t in inside:
        t.set_in_layout(True)
    assert np.array_equal(_pixels(plots.png_bytes(fast)), _pixels(plots.png_bytes(measured)))


def test_the_confusion_colour_bar_reads_counts_as_plain_numbers():
    """Decades labelled 1, 10, 100, 1000 (no mathtext powers of ten), no labels between them."""
    from cnnlab import plots

    cm = np.full((10, 10), 3)
    np.fill_diagonal(cm, 1000)
    fig = plots.confusion_figure(cm, "c")
    plots.png_bytes(fig)  # the tick labels are set when the figure is drawn
    bar = fig.axes[1].yaxis
    lo, hi = bar.get_view_interval()

    def shown(minor: bool) -> list[str]:
        return [t.get_text() for t in bar.get_ticklabels(minor=minor) if lo <= t.get_position()[1] <= hi]
    assert shown(minor=False) == ["1", "10", "100", "1000"]
    assert not any(shown(minor=True))


def test_png_bytes_keeps_the_alpha_channel_of_a_see_through_figure():
    from PIL import Image

    from cnnlab import plots

    fig = plots.gallery_figure(np.zeros((2, 28, 28)), ["a", "b"], "t")
    fig.patch.set_alpha(0.0)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    fast = plots.png_bytes(fig)
    assert Image.open(io.BytesIO(fast)).mode == "RGBA" and _pixels(fast)[0, 0, 3] == 0
    assert np.array_equal(_pixels(fast), _pixels(buf.getvalue()))


@pytest.mark.parametrize("shape, drawn_as", [((128, 3, 3), "QuadMesh"), ((32, 26, 26), "AxesImage")])
def test_a_map_grid_shows_each_cell_in_its_colour_whether_quads_or_image(shape, drawn_as):
    """Few cells are drawn as quads, many as an image (plots.MESH_CELLS); either way the pixel at a cell's centre
    has the colour map's colour of its value, an empty cell of the mosaic is white, and set_cells recolours."""
    import matplotlib

    from cnnlab import plots

    m, h, w = shape
    maps = np.random.default_rng(2).random((m - 3, h, w))  # 8 columns: the last row has 3 empty cells
    fig = plots.activation_grid_figure(maps, None, "t", 8, "viridis", 0.0, 1.0)
    ax = fig.axes[1]
    artist = (ax.collections + ax.images)[0]
    assert type(artist).__name__ == drawn_as
    colours = matplotlib.colormaps["viridis"]

    def check(values):
        pixels = _pixels(plots.png_bytes(fig))[..., :3].astype(int)
        height = pixels.shape[0]
        for k in (0, 1, m - 4):
            r, c = divmod(k, 8)
            y, x = r * h + h // 2, c * w + w // 2
            px, py = ax.transData.transform((x, y))
            expected = np.array(colours(values[k, h // 2, w // 2], bytes=True)[:3])
            assert np.abs(pixels[height - 1 - int(py), int(px)] - expected).max() <= 1, k
        r, c = divmod(m - 1, 8)  # an empty cell
        px, py = ax.transData.transform((c * w + w // 2, r * h + h // 2))
        assert (pixels[height - 1 - int(py), int(px)] == 255).all()

    check(maps)
    plots.set_cells(artist, plots.mosaic(1.0 - maps, 8))
    check(1.0 - maps)


@pytest.mark.parametrize("cols, ratios", [(4, None), (12, [1.5, 12, float("nan"), float("inf")] * 6)])
def test_map_labels_stand_where_outlined_text_would(cols, ratios, monkeypatch):
    """The map labels are one artist (plots._CellLabels); each stands where ``ax.text(..., va="top",
    ha="left")`` with the outline path effect stood: in each cell, the light pixels of the two (the labels'
    white fill) have their centre within half a pixel and their extent within a pixel of each other."""
    import matplotlib
    import matplotlib.patheffects as pe

    from cnnlab import plots

    maps = np.zeros((24, 5, 5))  # dark cells: the light pixels are the labels' fill

    def as_texts(ax, corners, texts, size):
        for (x, y), text in zip(corners, texts):
            ax.text(x, y, text, color="white", fontsize=size, va="top", ha="left", in_layout=False,
                    path_effects=[pe.withStroke(linewidth=1.5, foreground="black")])
        return matplotlib.artist.Artist()

    ours = plots.filter_grid_figure(maps, range(24), ratios, "t", cols, "viridis")
    monkeypatch.setattr(plots, "_CellLabels", as_texts)
    texts = plots.filter_grid_figure(maps, range(24), ratios, "t", cols, "viridis")
    assert not ours.axes[0].texts and len(texts.axes[0].texts) == 24
    light = [_pixels(plots.png_bytes(fig))[..., :3].astype(float).mean(axis=2) for fig in (ours, texts)]
    assert light[0].shape == light[1].shape
    height, ax = light[0].shape[0], ours.axes[0]
    for k in range(24):
        r, c = divmod(k, cols)
        (x0, y0), (x1, y1) = ax.transData.transform([(c * 5 - 0.5, r * 5 - 0.5), (c * 5 + 4.5, r * 5 + 4.5)])
        top, left = height - int(y0), int(x0)  # the cell's top left part, inside its grid lines
        cell = (slice(top + 2, top + int(y0 - y1) // 2), slice(left + 2, left + int(x1 - x0) - 2))
        weights = [np.maximum(pixels[cell] - 100, 0) for pixels in light]  # the dark cell is about 60
        centres = [np.array([(w.sum(axis=1) * np.arange(w.shape[0])).sum(), (w.sum(axis=0) *
                   np.arange(w.shape[1])).sum()]) / w.sum() for w in weights]
        extents = [np.argwhere(w > 50) for w in weights]
        assert all(len(e) > 5 for e in extents), k
        assert np.abs(centres[0] - centres[1]).max() < 0.5, (k, centres)
        assert np.abs(extents[0].min(axis=0) - extents[1].min(axis=0)).max() <= 1, k
        assert np.abs(extents[0].max(axis=0) - extents[1].max(axis=0)).max() <= 1, k
