"""The notebook tour, executed top to bottom in a real Jupyter kernel (nbclient + ipykernel) on the tiny preset."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="the notebook test needs nbformat (pip install -e '.[test]')")
nbclient = pytest.importorskip("nbclient", reason="the notebook test needs nbclient (pip install -e '.[test]')")
pytest.importorskip("ipykernel", reason="the notebook test needs ipykernel (pip install -e '.[test]')")

TOUR = Path(__file__).resolve().parent.parent / "examples" / "tour.ipynb"
PARAMETERS = 'PRESET = "tiny"\nEPOCHS = 3\nDATASET = "mnist"\n'


class RecordingClient(nbclient.NotebookClient):
    """Executes a notebook and records every in-place display update (``update_display_data``)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.updates: list[tuple[str, list[str]]] = []

    def _update_display_id(self, display_id, msg):  # noqa: D102
        # Called for a first display with an id too; only update_display_data redraws in place.
        if msg["header"]["msg_type"] == "update_display_data":
            self.updates.append((display_id, sorted(msg["content"]["data"])))
        return super()._update_display_id(display_id, msg)


def _cell(nb, text: str):
    cells = [c for c in nb.cells if c.cell_type == "code" and text in c.source]
    assert len(cells) == 1, f"expected one code cell with {text!r}, found {len(cells)}"
    return cells[0]


def _pngs(cell) -> list[dict]:
    return [o for o in cell.outputs if o.output_type in ("display_data", "execute_result")
            and "image/png" in o.get("data", {})]


def test_the_repository_keeps_the_tour_without_outputs():
    nb = nbformat.read(TOUR, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code)
    assert [c for c in code if "parameters" in c.metadata.get("tags", [])] == [code[0]]


def test_tour_runs_in_a_real_kernel_with_live_curves_updated_in_place(in_tmp):
    nb = nbformat.read(TOUR, as_version=4)
    params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    params.source = PARAMETERS
    client = RecordingClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(in_tmp)}})
    started = time.perf_counter()
    try:
        client.execute()  # raises CellExecutionError, with the cell and its traceback, on any error
    except RuntimeError as exc:  # no kernel could be started here
        if "kernel" in str(exc).lower() and "died" not in str(exc).lower():
            pytest.skip(f"no Jupyter kernel could start: {exc}")
        raise
    print(f"tour executed in {time.perf_counter() - started:.1f} s")

    live = _cell(nb, "live=True")
    shown = [o for o in live.outputs if o.output_type == "display_data" and "image/png" in o.data]
    assert len(shown) == 1, "the live curves are one picture, redrawn in place, not one per epoch"
    assert len(client.updates) == 3 - 1, "epochs 2 and 3 update the picture epoch 1 displayed"
    assert len({display_id for display_id, _ in client.updates}) == 1
    assert all("image/png" in kinds for _, kinds in client.updates)
    assert "epoch   3/3" in "".join(o.get("text", "") for o in live.outputs if o.output_type == "stream")

    own = _cell(nb, "plt.show()")
    assert _pngs(own), "a user's own plt.plot + plt.show() after cnnlab's cells must still render inline"

    for text in ("activation_pictures", "filter_pictures", "pattern_pictures", "evaluation_pictures"):
        assert _pngs(_cell(nb, text)), f"the {text} cell shows its picture"
    evaluation = "".join(o.get("text", "") for o in _cell(nb, "evaluation_pictures").outputs)
    assert evaluation.startswith("test accuracy 0.") and "(" in evaluation
    table = "".join(o.get("text", "") for o in _cell(nb, "compare.comparison").outputs).splitlines()
    assert table[0].split()[:2] == ["run", "train.seed"] and [row.split()[1] for row in table[1:3]] == ["0", "1"]
    assert _pngs(_cell(nb, "compare.comparison")), "the overlaid curves of both runs are shown"
    assert sorted(p.name for p in (in_tmp / "runs").iterdir()) == ["tiny", "tiny-2"]
