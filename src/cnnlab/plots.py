"""Figures only: arrays in, matplotlib figures out. The one module that imports matplotlib.

Each figure is a ``matplotlib.figure.Figure`` on its own Agg canvas, made without pyplot: cnnlab never picks
the process's backend (``matplotlib.use``), so a notebook's own ``plt.show()`` keeps drawing inline, and its
figures never enter pyplot's list of open figures (nothing to close; they are freed with the last reference).
"""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import matplotlib
from matplotlib.artist import Artist
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cnnlab import png
from cnnlab.errors import CnnlabError
from cnnlab.files import write_bytes

TRAIN_COLOUR, VAL_COLOUR = "tab:green", "tab:red"


def new_figure(figsize: tuple[float, float]) -> Figure:
    """Return an empty figure with constrained layout on its own Agg canvas (no pyplot, no backend change)."""
    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def curves_figure(history: list[dict[str, float]], log_loss: bool = False) -> Any:
    """Return a figure with accuracy (left) and loss (right) per epoch, training and validation."""
    epochs = [row["epoch"] for row in history]
    fig = new_figure((10, 3.6))
    ax_acc, ax_loss = fig.subplots(1, 2)
    for ax, key, title in ((ax_acc, "accuracy", "accuracy"), (ax_loss, "loss", "loss")):
        ax.plot(epochs, [row[key] for row in history], "o-", color=TRAIN_COLOUR, ms=3, label="training")
        ax.plot(epochs, [row[f"val_{key}"] for row in history], "o-", color=VAL_COLOUR, ms=3, label="validation")
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right" if key == "accuracy" else "upper right")
    if log_loss:
        ax_loss.set_yscale("log")
    if history:
        last = history[-1]
        fig.suptitle(f"epoch {last['epoch']}  step {last['step']}  lr {last['lr']:.3g}  "
                     f"val_accuracy {last['val_accuracy']:.4f}", fontsize=10)
    return fig


# what savefig does differently from the Agg canvas's own draw where these settings differ
_PLAIN_SAVEFIG = {"savefig.bbox": None, "savefig.transparent": False, "savefig.facecolor": "auto",
                  "savefig.edgecolor": "auto"}


def png_bytes(fig: Any, dpi: int = 100) -> bytes:
    """Render ``fig`` as PNG: the pixels of ``fig.savefig(..., dpi=dpi)`` in about 0.7 of its time.

    ``savefig`` draws a figure with a layout engine twice: once, painting nothing, to lay it out, then again
    to paint it. The Agg canvas lays the figure out within its one draw, to the same pixels; it serves whenever
    ``savefig`` would add nothing (an Agg canvas at ``dpi``, the default savefig settings), and its pixels are
    then encoded faster (``_encode_png``). Elsewhere this is ``savefig``.
    """
    if not _draws_like_savefig(fig, dpi):
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi)
        return buf.getvalue()
    fig.canvas.draw()
    return _encode_png(fig.canvas.buffer_rgba(), dpi)


def _draws_like_savefig(fig: Any, dpi: int) -> bool:
    """Whether the figure's own Agg canvas draws the pixels of ``savefig`` at ``dpi`` (see ``png_bytes``)."""
    plain = all(matplotlib.rcParams[key] == value for key, value in _PLAIN_SAVEFIG.items())
    return plain and type(fig.canvas) is FigureCanvasAgg and fig.dpi == dpi


def _encode_png(rgba: Any, dpi: int) -> bytes:
    """An opaque picture as RGB (``cnnlab.png``): the pixels of savefig's RGBA PNG in half its encoding time,
    about as many bytes (the alpha channel it drops was all 255)."""
    return png.encode(_png_pixels(rgba), dpi)


def _png_pixels(rgba: Any) -> Any:
    """A copy of the canvas's RGBA pixels to encode: RGB where every pixel is opaque, else RGBA. (Pillow drops
    the alpha channel in a third of the time of numpy's copy of a strided view.)"""
    import numpy as np
    from PIL import Image

    rgba = np.asarray(rgba)
    if rgba[..., 3].min() < 255:
        return rgba.copy()
    return np.asarray(Image.frombuffer("RGBA", (rgba.shape[1], rgba.shape[0]), rgba, "raw", "RGBA", 0, 1)
                      .convert("RGB"))


def save_figure(fig: Any, path: str | Path, dpi: int = 100) -> Path:
    """Render ``fig`` to PNG and write it to ``path`` atomically (not fsynced: a picture can be drawn again)."""
    return write_bytes(path, png_bytes(fig, dpi), durable=False)


# ---------------------------------------------------------------------------------------------------------
# Looking inside: arrays from cnnlab.inspection in, figures out

GRID_LINE = "#dddddd"  # the articles' thin light lines between maps
INPUT_CMAP = "binary"  # MNIST digits as the articles show them: dark strokes on white


def check_cmap(name: str) -> str:
    """Return ``name`` if matplotlib knows the colour map, else raise a one-line error with examples."""
    if name not in matplotlib.colormaps:
        raise CnnlabError(f"--cmap {name!r} is not a matplotlib colour map; try viridis, magma, inferno, "
                          "plasma, cividis, gray, binary or jet")
    return name


def mosaic(maps: Any, cols: int) -> Any:
    """Tile maps (M, H, W) into one array (rows * H, cols * W), row by row; empty cells are NaN."""
    import numpy as np

    maps = np.asarray(maps, dtype=np.float32)
    m, h, w = maps.shape
    rows = max(1, -(-m // cols))
    grid = np.full((rows * h, cols * w), np.nan, dtype=np.float32)
    for i in range(m):
        r, c = divmod(i, cols)
        grid[r * h:(r + 1) * h, c * w:(c + 1) * w] = maps[i]
    return grid


def _map_grid(ax: Any, maps: Any, cols: int, cmap: str, vmin: float, vmax: float,
              labels: list[str] | None = None) -> Any:
    """Draw maps as one tiled image with thin lines between them and a label in each cell's corner."""
    m, h, w = maps.shape
    cols = max(1, min(cols, m))
    rows = -(-m // cols)
    image = _cells(ax, mosaic(maps, cols), matplotlib.colormaps[cmap].with_extremes(bad="white"), vmin, vmax)
    for c in range(1, cols):
        ax.axvline(c * w - 0.5, color=GRID_LINE, linewidth=0.6)
    for r in range(1, rows):
        ax.axhline(r * h - 0.5, color=GRID_LINE, linewidth=0.6)
    texts = labels if labels is not None else [str(i) for i in range(m)]
    corners = [(c * w - 0.3, r * h - 0.3) for r, c in (divmod(i, cols) for i in range(len(texts)))]
    ax.add_artist(_CellLabels(ax, corners, texts, 6 if cols > 8 else 7))
    ax.set_xticks([])
    ax.set_yticks([])
    return image


MESH_CELLS = 10_000  # a grid of at most this many cells is drawn as quads (see _cells)


def _cells(ax: Any, grid: Any, cmap: Any, vmin: float | None = None, vmax: float | None = None,
           aspect: str = "equal") -> Any:
    """Draw ``grid`` (rows, cols; NaN: an empty cell) one rectangle per value, as ``imshow`` places an image
    (cell centres on integer coordinates, row 0 on top), and return the artist (``set_cells`` changes its values).

    Few large cells are drawn as a mesh of quads: the colour map then runs once per cell, where an image runs it
    (and its resampling and masking) once per pixel; the seed model's Conv2D_3 grid (128 maps of 3x3, 1,152
    cells over about 0.9 million pixels) takes 3-4 ms instead of 28-31 (AMD EPYC Zen 4). Many small cells stay
    an image, which is then the faster (32 maps of 26x26: 5.8 ms against 11.7 as quads)."""
    import numpy as np

    rows, cols = grid.shape
    if rows * cols > MESH_CELLS:
        return ax.imshow(grid, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest", aspect=aspect)
    mesh = ax.pcolormesh(np.arange(cols + 1) - 0.5, np.arange(rows + 1) - 0.5, np.ma.masked_invalid(grid),
                         cmap=cmap, vmin=vmin, vmax=vmax)
    ax.set_xlim(-0.5, cols - 0.5)
    ax.set_ylim(rows - 0.5, -0.5)
    ax.set_aspect(aspect)
    return mesh


def set_cells(artist: Any, grid: Any) -> None:
    """Give the artist of ``_cells`` new values of the same shape."""
    import numpy as np
    from matplotlib.image import AxesImage

    if isinstance(artist, AxesImage):
        artist.set_data(grid)
    else:
        artist.set_array(np.ma.masked_invalid(grid))


class _CellLabels(Artist):
    """The labels in the top left corners of a grid's cells: white text outlined in black, where
    ``ax.text(x, y, text, color="white", fontsize=size, va="top", ha="left", clip_on=False,
    path_effects=[withStroke(linewidth=1.5, foreground="black")])`` puts each, but drawn as one outline and one
    fill of all their glyphs: a grid of 128 labels took 175 ms of its figure's 305 as Text artists (their
    layout, their path effects, 256 paths to draw), about 60 ms so (AMD EPYC Zen 4). They lie inside the axes:
    the layout engine does not measure them."""

    def __init__(self, ax: Any, corners: list[tuple[float, float]], texts: list[str], size: float) -> None:
        super().__init__()
        self.set_transform(ax.transData)
        self.set_in_layout(False)
        self.set_zorder(3)  # a Text's: above the cells and the grid lines
        self._corners, self._texts, self._size = corners, texts, size

    def draw(self, renderer: Any) -> None:
        """Draw every label: the outline (with the fill) first, then the fill, as the path effect does."""
        if not self.get_visible() or not any(self._texts):
            return
        import numpy as np
        from matplotlib.font_manager import FontProperties
        from matplotlib.path import Path
        from matplotlib.textpath import text_to_path
        from matplotlib.transforms import IdentityTransform

        prop = FontProperties(size=self._size)
        scale = renderer.points_to_pixels(self._size) / text_to_path.FONT_SCALE
        below: dict[tuple[float, float], tuple[float, float]] = {}
        paths = []
        for (x, y), text in zip(self.get_transform().transform(self._corners), self._texts):
            if not text:
                continue
            _, height, descent = renderer.get_text_width_height_descent(text, prop, ismath=False)
            if (height, descent) not in below:  # the layout depends on the text only through these
                below[height, descent] = _baseline_offset(self.figure, renderer, text, prop)
            dx, dy = below[height, descent]
            verts, codes = text_to_path.get_text_path(prop, text)
            paths.append(Path(np.asarray(verts) * scale + (x + dx, y + dy), codes))
        glyphs = Path.make_compound_path(*paths)
        gc = renderer.new_gc()
        gc.set_foreground("white")
        white = gc.get_rgb()
        gc.set_foreground("black")
        gc.set_linewidth(1.5)
        renderer.draw_path(gc, glyphs, IdentityTransform(), white)
        gc.set_linewidth(0.0)
        renderer.draw_path(gc, glyphs, IdentityTransform(), white)
        gc.restore()


def _baseline_offset(fig: Any, renderer: Any, text: str, prop: Any) -> tuple[float, float]:
    """Where a Text laid out ``va="top", ha="left"`` at a point starts its baseline, from that point (display
    units): asked of a Text itself, which draws onto a stand-in that only notes where its line goes (the
    layout's leading and font metrics are matplotlib's to choose)."""
    from matplotlib.text import Text
    from matplotlib.transforms import IdentityTransform

    noted: list[tuple[float, float]] = []

    class Noting:
        def __getattr__(self, name: str) -> Any:
            return getattr(renderer, name)

        def draw_text(self, gc: Any, x: float, y: float, *args: Any, **kwargs: Any) -> None:
            noted.append((x, y))

        draw_tex = draw_text  # under rcParams["text.usetex"]

    probe = Text(0.0, 0.0, text, fontproperties=prop, va="top", ha="left", transform=IdentityTransform())
    probe.set_figure(fig)  # (a subfigure serves: its dpi is its root's)
    probe.draw(Noting())
    x, y = noted[0]
    return x, (renderer.get_canvas_width_height()[1] - y if renderer.flipy() else y)


def activation_grid_figure(maps: Any, image: Any = None, title: str = "", cols: int = 8, cmap: str = "viridis",
                           vmin: float | None = None, vmax: float | None = None,
                           colorbar_label: str = "activation", image_title: str = "input") -> Any:
    """Return a figure: the input image on the left, every map of a layer in a numbered grid on the right.

    Args:
        maps: (M, H, W) values to show, one colour scale for all of them.
        image: the input (28, 28), pixel values 0..255 (or None).
        title: the figure title (layer name and shape).
        cols: maps per row.
        cmap: matplotlib colour map of the maps.
        vmin: bottom of the shared colour scale (default: the smallest value, at most 0).
        vmax: top of the shared colour scale (default: the largest value).
        colorbar_label: what the colour bar measures.
        image_title: the caption of the input image.
    """
    return _activation_grid(maps, image, title, cols, cmap, vmin, vmax, colorbar_label, image_title)[0]


def _activation_grid(maps: Any, image: Any, title: str, cols: int, cmap: str, vmin: float | None,
                     vmax: float | None, colorbar_label: str, image_title: str) -> tuple[Any, Any, Any, Any]:
    """``activation_grid_figure`` and the artists a series changes: (figure, input image or None, grid, title)."""
    import numpy as np

    maps = np.asarray(maps, dtype=np.float32)
    lo = float(min(np.nanmin(maps), 0.0)) if vmin is None else vmin
    hi = float(np.nanmax(maps)) if vmax is None else vmax
    hi = hi if hi > lo else lo + 1.0
    m, h, w = maps.shape
    cols = max(1, min(cols, m))
    rows = -(-m // cols)
    cell = 0.9 if cols <= 8 else 0.7
    grid_w, grid_h = cols * cell * (w / max(h, w)), rows * cell * (h / max(h, w))
    fig = new_figure((grid_w + 3.4, max(grid_h + 0.9, 3.2)))
    left, right = fig.subfigures(1, 2, width_ratios=[2.4, grid_w + 1.0])
    ax_in = left.subplots()
    drawn_input = None
    if image is not None:
        drawn_input = ax_in.imshow(np.asarray(image), cmap=INPUT_CMAP, vmin=0, vmax=255, interpolation="nearest")
        ax_in.set_title(image_title, fontsize=9)
    ax_in.set_xticks([])
    ax_in.set_yticks([])
    if image is None:
        ax_in.axis("off")
    ax = right.subplots()
    drawn = _map_grid(ax, maps, cols, cmap, lo, hi)
    right.colorbar(drawn, ax=ax, shrink=min(1.0, 4.0 / max(grid_h, 1e-9)) if grid_h > 4 else 1.0,
                   label=colorbar_label)
    return fig, drawn_input, drawn, fig.suptitle(title, fontsize=11)


def activation_grid_pngs(grids: Iterable[tuple[Any, Any, str]], vmin: float, vmax: float, cols: int = 8,
                         cmap: str = "viridis", colorbar_label: str = "activation", image_title: str = "input",
                         dpi: int = 100) -> Iterator[bytes]:
    """Yield the PNG of ``activation_grid_figure`` for each ``(maps, image, title)`` of a series: maps of one
    shape on one colour scale (``vmin`` to ``vmax``), and an image for each or for none.

    One figure is laid out and drawn for the first; only its two images and its title change after. The rest
    (map labels, grid lines, colour bar, axes) paints the same pixels every time, so the first drawing keeps
    its renderer calls and later pictures repeat them (``_Recording``): the pixels of ``png_bytes``, each
    picture after the first in a little over half its time."""
    import numpy as np

    grids = iter(grids)
    first = next(grids, None)
    if first is None:
        return
    maps, image, title = first
    fig, drawn_input, drawn_grid, drawn_title = _activation_grid(
        maps, image, title, cols, cmap, vmin, vmax, colorbar_label, image_title)
    changing = [artist for artist in (drawn_input, drawn_grid, drawn_title) if artist is not None]
    recording = _Recording(fig, changing) if _draws_like_savefig(fig, dpi) else None
    first_png = None if recording else png_bytes(fig, dpi)
    fig.set_layout_engine("none")  # keep the first picture's layout: the same shapes, the same places

    def later() -> Iterator[None]:
        """Turn the figure into the next picture of the series, once per picture."""
        for maps, image, title in grids:
            set_cells(drawn_grid, mosaic(maps, max(1, min(cols, len(maps)))))
            if drawn_input is not None:
                drawn_input.set_data(np.asarray(image))
            drawn_title.set_text(title)
            yield

    if recording is None:
        yield first_png
        yield from (png_bytes(fig, dpi) for _ in later())
        return
    # Pillow encodes with the GIL released: each picture is encoded on a second thread while the next is drawn
    with ThreadPoolExecutor(1) as encoder:
        pending = encoder.submit(png.encode, _png_pixels(recording.pixels()), dpi)
        for _ in later():
            pixels = _png_pixels(recording.repaint())  # a copy: the next picture repaints the canvas
            yield pending.result()
            pending = encoder.submit(png.encode, pixels, dpi)
        yield pending.result()


def png_with_title_later(fig: Any, title: Any, dpi: int = 100) -> Callable[[str], bytes]:
    """Draw ``fig`` now, and return ``finish(text)``: the PNG of ``fig`` (as ``png_bytes``) once its ``title``
    (one of its Text artists) says ``text``, where only the title is painted anew.

    For a picture whose title waits on a result while the rest can be drawn: ``cnnlab patterns`` draws its
    heat map while the class centroids are computed in another process, and titles it with their accuracy.
    The layout of the first drawing is kept (a title of one line takes the same room whatever it says)."""
    if not _draws_like_savefig(fig, dpi):
        def finish_slowly(text: str) -> bytes:
            title.set_text(text)
            return png_bytes(fig, dpi)
        return finish_slowly
    recording = _Recording(fig, [title])
    fig.set_layout_engine("none")

    def finish(text: str) -> bytes:
        title.set_text(text)
        return _encode_png(recording.repaint(), dpi)
    return finish


class _Recording:
    """Draws a figure on its Agg canvas (what ``png_bytes`` paints) and keeps the drawing: the renderer calls
    of its artists, and the turns of the ``changing`` artists. ``repaint`` repeats the calls and draws only
    the changing artists anew, skipping the work behind the rest (text layout, text paths, path effects,
    ticks): the same pixels while the figure's layout and its other artists stay as they were. For figures
    drawn straight onto the canvas (no agg filters: their pixels would pass by the recording)."""

    def __init__(self, fig: Any, changing: list[Any]) -> None:
        self._renderer = fig.canvas.get_renderer()
        self._steps: list[tuple[str, Any, tuple, dict]] = []
        self._renderer.clear()
        for artist in changing:  # their turn is kept, not their calls: they draw on the renderer itself
            artist.draw = lambda renderer, artist=artist: self._draw_changing(artist)
        try:
            fig.draw(self)
        finally:
            for artist in changing:
                del artist.draw

    def __getattr__(self, name: str) -> Any:
        """Stand in for the renderer while the figure draws: pass everything on, and keep the ``draw_*``
        calls, each with a copy of its graphics context (the callers change and reuse theirs)."""
        found = getattr(self._renderer, name)
        if not name.startswith("draw_"):
            return found

        def draw_and_keep(gc: Any, *args: Any, **kwargs: Any) -> None:
            kept = self._renderer.new_gc()
            kept.copy_properties(gc)
            self._steps.append((name, kept, args, kwargs))
            found(gc, *args, **kwargs)
        return draw_and_keep

    def _draw_changing(self, artist: Any) -> None:
        self._steps.append(("", artist, (), {}))
        type(artist).draw(artist, self._renderer)

    def pixels(self) -> Any:
        """The RGBA pixels painted last."""
        return self._renderer.buffer_rgba()

    def repaint(self) -> Any:
        """Paint the figure again: the kept calls, the changing artists as they are now; return the pixels."""
        renderer = self._renderer
        renderer.clear()
        for name, target, args, kwargs in self._steps:
            if name:
                getattr(renderer, name)(target, *args, **kwargs)
            else:
                target.draw(renderer)
        return renderer.buffer_rgba()


def activation_bars_figure(values: Any, image: Any = None, title: str = "") -> Any:
    """Return a figure for a flat layer (dense, flatten): the input and one bar per unit."""
    import numpy as np

    values = np.asarray(values, dtype=np.float32)
    fig = new_figure((11, 3.2))
    ax_in, ax = fig.subplots(1, 2, width_ratios=[1, 4])
    if image is not None:
        ax_in.imshow(np.asarray(image), cmap=INPUT_CMAP, vmin=0, vmax=255, interpolation="nearest")
        ax_in.set_title("input", fontsize=9)
    ax_in.set_xticks([])
    ax_in.set_yticks([])
    ax.bar(np.arange(len(values)), values, width=1.0, color="tab:blue")
    ax.set_xlim(-0.5, len(values) - 0.5)
    ax.set_xlabel("unit")
    ax.set_ylabel("activation")
    ax.grid(alpha=0.3, axis="y")
    fig.suptitle(title, fontsize=11)
    return fig


def filter_grid_figure(pixels: Any, maps: Any, ratios: Any = None, title: str = "", cols: int = 8,
                       cmap: str = "gray") -> Any:
    """Return a grid of gradient-ascent patterns, each labelled with its map and the ratio it reached.

    Args:
        pixels: (M, 28, 28) patterns in pixel values 0..255.
        maps: the map index of each pattern (M,).
        ratios: per pattern, its activation over the test images' average (M,), shown as ``x12``.
        title: the figure title.
        cols: patterns per row.
        cmap: colour map.
    """
    import numpy as np

    pixels = np.asarray(pixels, dtype=np.float32)
    labels = [f"{int(mp)}" + (f" x{_ratio(r)}" if ratios is not None else "") for mp, r in
              zip(maps, ratios if ratios is not None else [None] * len(maps))]
    m = len(pixels)
    cols = max(1, min(cols, m))
    rows = -(-m // cols)
    fig = new_figure((cols * 1.05 + 1.4, rows * 1.05 + 0.8))
    ax = fig.subplots()
    drawn = _map_grid(ax, pixels, cols, cmap, 0.0, 255.0, labels)
    fig.colorbar(drawn, ax=ax, shrink=0.8, label="pixel value")
    fig.suptitle(title, fontsize=10)
    return fig


def _ratio(value: float) -> str:
    import math

    if value is None or math.isnan(value):
        return "-"
    if math.isinf(value):
        return "inf"
    return f"{value:.0f}" if value >= 10 else f"{value:.1f}"


def class_heatmap_figure(means: Any, title: str = "", cmap: str = "viridis", classes: Any = None) -> Any:
    """Return a classes x maps heat map of mean activations; ``classes`` labels the rows (default 0, 1, ...)."""
    import numpy as np

    means = np.asarray(means, dtype=np.float32)
    k, m = means.shape
    fig = new_figure((min(3 + m * 0.09, 16), 1.6 + k * 0.3))
    ax = fig.subplots()
    drawn = _cells(ax, means, cmap, aspect="auto")
    ax.set_yticks(range(k), labels=_class_labels(classes, k))
    ax.set_ylabel("class")
    ax.set_xlabel("map")
    step = max(1, m // 16)
    ax.set_xticks(range(0, m, step))
    fig.colorbar(drawn, ax=ax, label="mean activation")
    ax.set_title(title, fontsize=10)
    return fig


def confusion_figure(confusion: Any, title: str = "", classes: Any = None) -> Any:
    """Return the confusion matrix (rows true, columns predicted) with the count in every cell; ``classes``
    labels rows and columns (default 0, 1, ...)."""
    import numpy as np
    from matplotlib.colors import LogNorm
    from matplotlib.ticker import LogFormatter

    cm = np.asarray(confusion)
    k = len(cm)
    fig = new_figure((1.2 + 0.55 * k, 0.8 + 0.5 * k))
    ax = fig.subplots()
    # log colours: the few mistakes stay visible next to the thousand correct ones on the diagonal
    drawn = ax.imshow(np.maximum(cm, 0.5), cmap="Blues", norm=LogNorm(vmin=0.5, vmax=max(cm.max(), 1)))
    for (r, c), n in np.ndenumerate(cm):  # the counts lie inside their cells: nothing for the layout to measure
        if n:
            ax.text(c, r, str(n), ha="center", va="center", fontsize=7,
                    color="white" if n > max(cm.max(), 1) ** 0.7 else "black", in_layout=False)
    labels = _class_labels(classes, k)
    wide = max(len(label) for label in labels) > 2
    ax.set_xticks(range(k), labels=labels, rotation=45 if wide else 0, ha="right" if wide else "center")
    ax.set_yticks(range(k), labels=labels)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    bar = fig.colorbar(drawn, ax=ax, label="images (log scale)")
    # counts read as 1, 10, 100, 1000 rather than powers of ten; mathtext would also cost its parser's
    # start-up (about 0.07 s, once per process)
    bar.ax.yaxis.set_major_formatter(LogFormatter())
    bar.minorticks_off()
    ax.set_title(title, fontsize=10)
    return fig


def _class_labels(classes: Any, k: int) -> list[str]:
    names = [str(c) for c in (classes or [])][:k]
    return names + [str(c) for c in range(len(names), k)]


def gallery_figure(images: Any, captions: list[str], title: str = "", cols: int = 8) -> Any:
    """Return a gallery of images (K, 28, 28), pixel values 0..255, each with a caption above it.

    The tiles are one mosaic on one axes (dark strokes on white, a light frame round each image): a layout
    engine placing one axes per image spends about half a second on 24 of them.
    """
    import numpy as np

    images = np.asarray(images)
    n = max(len(images), 1)
    cols = max(1, min(cols, n))
    rows = -(-n // cols)
    h, w = images.shape[1:3] if len(images) else (28, 28)
    pad_x, pad_top = 3, 9  # mosaic pixels round each tile: room for its caption above it
    cell_h, cell_w = h + pad_top + 1, w + 2 * pad_x
    mosaic = np.full((rows * cell_h, cols * cell_w, 3), 255, dtype=np.uint8)
    frame = np.array(matplotlib.colors.to_rgb(GRID_LINE)) * 255
    fig = new_figure((cols * 1.25, rows * 1.45 + 0.4))
    ax = fig.subplots()
    for i, (image, caption) in enumerate(zip(images, captions)):
        top, left = (i // cols) * cell_h + pad_top, (i % cols) * cell_w + pad_x
        mosaic[top - 1:top + h + 1, left - 1:left + w + 1] = frame
        mosaic[top:top + h, left:left + w] = (255 - np.clip(image, 0, 255))[..., None]  # binary: 255 is black
        ax.text(left + w / 2, top - 2, caption, ha="center", va="bottom", fontsize=7)
    ax.imshow(mosaic, interpolation="nearest")
    ax.set_axis_off()
    fig.suptitle(title, fontsize=10)
    return fig


def saliency_figure(image: Any, gradient: Any, grad_cam: Any, title: str = "", cam_layer: str = "") -> Any:
    """Return three panels: the input, gradient saliency over it, Grad-CAM over it."""
    import numpy as np

    fig = new_figure((9.6, 3.5))
    axes = fig.subplots(1, 3)
    panels = ((None, "input", None), (gradient, "gradient saliency |d logit / d pixel|", "hot"),
              (grad_cam, f"Grad-CAM ({cam_layer})", "jet"))
    for ax, (overlay, caption, cmap) in zip(axes, panels):
        ax.imshow(np.asarray(image), cmap="gray_r" if overlay is None else "gray", vmin=0, vmax=255,
                  interpolation="nearest")
        if overlay is not None:
            drawn = ax.imshow(np.asarray(overlay), cmap=cmap, alpha=0.6, interpolation="bilinear",
                              vmin=0, vmax=max(float(np.max(overlay)), 1e-12))
            fig.colorbar(drawn, ax=ax, shrink=0.8)
        ax.set_title(caption, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=10)
    return fig



# ---------------------------------------------------------------------------------------------------------
# Experiments: several runs on one picture, a sweep's history.


def _figure(width: float, height: float, cols: int = 1) -> tuple[Any, Any]:
    fig = new_figure((width, height))
    return fig, fig.subplots(1, cols, squeeze=False)[0]


def compare_figure(series: list[dict[str, list[float]]], names: list[str], x: str) -> Any:
    """Overlay runs' accuracy (left) and loss (right): one colour per run, validation solid, training dashed."""
    fig, (ax_acc, ax_loss) = _figure(11, 4.2 + 0.18 * len(names), cols=2)
    colours = matplotlib.colormaps["tab10" if len(names) <= 10 else "tab20"]
    for i, (s, name) in enumerate(zip(series, names)):
        colour = colours(i % colours.N)
        for ax, key in ((ax_acc, "accuracy"), (ax_loss, "loss")):
            ax.plot(s["x"], s[f"val_{key}"], "o-", color=colour, lw=1.5, ms=3, label=name)
            ax.plot(s["x"], s[key], "--", color=colour, lw=1.0, alpha=0.7)
    for ax, title in ((ax_acc, "accuracy (solid: validation, dashed: training)"), (ax_loss, "loss")):
        ax.set_xlabel({"seconds": "seconds of training"}.get(x, x))
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    fig.legend(*ax_acc.get_legend_handles_labels(), loc="outside lower center", ncols=1 if len(names) > 4 else 2,
               fontsize=8, frameon=False)
    return fig


def sweep_history_figure(rows: list[dict[str, Any]], metric: str, direction: str) -> Any:
    """A sweep's optimization history: each trial's metric by trial number (pruned hollow) and the best so far."""
    fig, (ax,) = _figure(8, 4)
    done = [r for r in rows if r["value"] is not None]
    for state, style in (("complete", dict(color="tab:blue", label="complete")),
                         ("pruned", dict(facecolors="none", edgecolors="tab:gray", label="pruned (last report)"))):
        pts = [r for r in done if r["state"] == state]
        if pts:
            ax.scatter([r["trial"] for r in pts], [r["value"] for r in pts], s=22, **style)
    best, xs, ys = None, [], []
    pick = max if direction == "maximize" else min
    for r in sorted((r for r in done if r["state"] == "complete"), key=lambda r: r["trial"]):
        best = r["value"] if best is None else pick(best, r["value"])
        xs.append(r["trial"])
        ys.append(best)
    if xs:
        ax.step(xs, ys, where="post", color="tab:red", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(metric)
    ax.set_title("optimization history", fontsize=10)
    ax.grid(alpha=0.3)
    if done:
        ax.legend(fontsize=8)
    return fig


def sweep_params_figure(rows: list[dict[str, Any]], space: list[Any], metric: str) -> Any:
    """Each swept parameter (one panel each) against the trials' metric; complete filled, pruned hollow."""
    fig, axes = _figure(4 * len(space), 3.6, cols=len(space))
    for ax, param in zip(axes, space):
        for state, style in (("complete", dict(color="tab:blue")),
                             ("pruned", dict(facecolors="none", edgecolors="tab:gray"))):
            pts = [r for r in rows if r["state"] == state and r["value"] is not None and r[param.key] is not None]
            xs = [r[param.key] if param.kind != "choice" else str(r[param.key]) for r in pts]
            ax.scatter(xs, [r["value"] for r in pts], s=22, label=state, **style)
        if param.log and any(r["value"] is not None for r in rows):
            ax.set_xscale("log")
        ax.set_xlabel(param.key)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    if rows:
        axes[0].legend(fontsize=8)
    return fig
