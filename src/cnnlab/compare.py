"""Runs side by side: the config keys that differ, the figures that matter, and their curves on one picture.

``compare(runs)`` returns one row per run; ``differing_keys(configs)`` the dotted keys whose values are not the
same in every config. A run argument is a run folder, a glob, or a folder of runs (a sweep folder).
"""

from __future__ import annotations

import csv
import glob
import io
import json
import math
import sys
import tomllib
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from cnnlab import store
from cnnlab.errors import CnnlabError

Echo = Callable[[str], None]
METRIC_COLUMNS = ("epochs", "best_val_accuracy", "last_val_accuracy", "test_accuracy", "seconds_per_epoch",
                  "params")
X_AXES = ("step", "epoch", "seconds")
EVALUATION = Path("inspect") / "evaluation.json"  # written by ``cnnlab evaluate``
TRIAL_RECORD = "trial.json"  # written by ``cnnlab sweep`` into each trial's folder


@dataclass
class RunInfo:
    """What compare needs from one run folder: its flat config, history and figures."""

    path: Path
    flat: dict[str, Any]
    history: list[dict[str, float]]
    params: int
    test_accuracy: float | None
    kind: tuple[str, int]  # (dataset, classes): runs of different kinds are not compared


@dataclass
class Comparison:
    """The table (``rows``), the keys that differ, the runs compared and the lines about runs left out."""

    rows: list[dict[str, Any]]
    keys: list[str]
    runs: list[RunInfo]
    skipped: list[str] = field(default_factory=list)


def compare(runs: Iterable[str | Path] | str | Path, echo: Echo | None = None) -> list[dict[str, Any]]:
    """Return one row per run: ``run``, the differing dotted config keys, and ``METRIC_COLUMNS``.

    Args:
        runs: run folders, globs, or folders holding run folders (e.g. a sweep folder).
        echo: where to say, one line per run, why a run was left out (runs on another dataset or class count).

    Returns:
        Rows as dicts; ``test_accuracy`` is None for a run never evaluated, the val figures None before epoch 1.
    """
    result = comparison(runs)
    for line in result.skipped:
        if echo is not None:
            echo(line)
    return result.rows


def comparison(runs: Iterable[str | Path] | str | Path) -> Comparison:
    """Load the runs and build the table; see ``compare``."""
    paths = find_runs(runs)
    infos = [read_run(p) for p in paths]
    kept, skipped = _same_kind(infos)
    keys = differing_keys([r.flat for r in kept], flat=True)
    rows = [_row(r, keys) for r in kept]
    return Comparison(rows=rows, keys=keys, runs=kept, skipped=skipped)


def find_runs(args: Iterable[str | Path] | str | Path) -> list[Path]:
    """Expand run arguments: a run folder, a glob, or a folder whose sub-folders are runs; keep the order given."""
    if isinstance(args, (str, Path)):
        args = [args]
    found: list[Path] = []
    for arg in args:
        text = str(arg)
        matches = [Path(m) for m in sorted(glob.glob(text))] if glob.has_magic(text) else [Path(text)]
        if not matches:
            raise CnnlabError(f"{text}: no file or folder matches this pattern")
        for path in matches:
            found.extend(_runs_in(path))
    unique = list(dict.fromkeys(p.resolve() for p in found))
    if not unique:
        raise CnnlabError("no runs to compare; give run folders, a glob like 'runs/*' or a folder of runs")
    return [Path(p) for p in unique]


def _runs_in(path: Path) -> list[Path]:
    if is_run(path):
        return [path]
    if path.is_dir():
        inner = sorted(p for p in path.iterdir() if is_run(p))
        if inner:
            return inner
    store.require_run(path)  # raises the usual one-line error naming what a run folder needs
    return []


def is_run(path: Path) -> bool:
    return (path / store.CONFIG).is_file() and (path / store.WEIGHTS).is_file()


def read_run(path: Path) -> RunInfo:
    """Read a run folder's config (as flat dotted keys), history, parameter count and test accuracy."""
    try:
        raw = tomllib.loads((path / store.CONFIG).read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, OSError) as exc:
        raise CnnlabError(f"{path / store.CONFIG}: cannot be read ({exc}); the run folder is damaged") from None
    model = store.read_json(path / store.MODEL) if (path / store.MODEL).exists() else {"layers": []}
    layers = raw.get("model", {}).get("layers", [])
    classes = int(layers[-1].get("units", 0)) if layers else 0
    dataset = str(raw.get("data", {}).get("dataset", "mnist"))
    return RunInfo(path=path, flat=flatten(raw), history=store.read_history(path),
                   params=sum(int(row.get("params", 0)) for row in model.get("layers", [])),
                   test_accuracy=_test_accuracy(path), kind=(dataset, classes))


def _test_accuracy(path: Path) -> float | None:
    for name, key in ((EVALUATION, "accuracy"), (Path(TRIAL_RECORD), "test_accuracy")):
        file = path / name
        if file.is_file():
            value = store.read_json(file).get(key)
            if value is not None:
                return float(value)
    return None


def _same_kind(infos: list[RunInfo]) -> tuple[list[RunInfo], list[str]]:
    """Keep the runs of the first run's dataset and class count; one line for each run left out."""
    if not infos:
        return [], []
    first = infos[0].kind
    kept = [r for r in infos if r.kind == first]
    skipped = [f"{r.path}: left out, it trained on {r.kind[0]} with {r.kind[1]} classes and the others on "
               f"{first[0]} with {first[1]} classes" for r in infos if r.kind != first]
    return kept, skipped


# ---------------------------------------------------------------------------------------------------------
# Configs


def flatten(config: dict[str, Any]) -> dict[str, Any]:
    """Return a nested config as dotted keys; layers are keyed by name as ``--set`` addresses them.

    ``{"model": {"layers": [{"name": "Dense_1", "units": 100}]}}`` gives ``{"model.layers.Dense_1.units": 100}``;
    an unnamed layer is keyed by its index.
    """
    out: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}.{key}" if prefix else str(key))
        elif isinstance(node, list) and node and all(isinstance(v, dict) for v in node):
            for i, item in enumerate(node):
                walk({k: v for k, v in item.items() if k != "name"}, f"{prefix}.{item.get('name', i)}")
        else:
            out[prefix] = node

    walk(config, "")
    return out


def differing_keys(configs: list[dict[str, Any]], flat: bool = False) -> list[str]:
    """Return the dotted keys whose values are not equal in all ``configs`` (missing counts as different).

    Args:
        configs: nested config dicts (``Config.to_dict()`` or a parsed config.toml), or flat ones with ``flat``.

    Returns:
        The keys in the order they first appear.
    """
    flats = configs if flat else [flatten(c) for c in configs]
    keys = list(dict.fromkeys(k for f in flats for k in f))
    return [k for k in keys if len({json.dumps(f[k], sort_keys=True, default=str) if k in f else None
                                    for f in flats}) > 1]


# ---------------------------------------------------------------------------------------------------------
# The table


def _row(run: RunInfo, keys: list[str]) -> dict[str, Any]:
    vals = [h["val_accuracy"] for h in run.history if not _nan(h.get("val_accuracy"))]
    seconds = [h["seconds"] for h in run.history if "seconds" in h]
    row: dict[str, Any] = {"run": str(run.path)}
    row.update({k: run.flat.get(k) for k in keys})
    row.update({"epochs": len(run.history), "best_val_accuracy": max(vals) if vals else None,
                "last_val_accuracy": run.history[-1].get("val_accuracy") if run.history else None,
                "test_accuracy": run.test_accuracy,
                "seconds_per_epoch": sum(seconds) / len(seconds) if seconds else None, "params": run.params})
    return row


def _nan(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def format_table(result: Comparison) -> str:
    """Return the table as aligned text: run, differing keys, then the figures."""
    heads = ["run", *result.keys, "epochs", "best val_acc", "last val_acc", "test_acc", "s/epoch", "params"]
    names = _short_names([r.path for r in result.runs])
    body = []
    for name, row in zip(names, result.rows):
        body.append([name, *(_cell(row[k]) for k in result.keys), str(row["epochs"]),
                     _cell(row["best_val_accuracy"], 4), _cell(row["last_val_accuracy"], 4),
                     _cell(row["test_accuracy"], 4), _cell(row["seconds_per_epoch"], 2), f"{row['params']:,}"])
    widths = [max(len(r[i]) for r in [heads, *body]) for i in range(len(heads))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in [heads, *body]]
    return "\n".join(lines)


def _cell(value: Any, digits: int | None = None) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if digits is not None else f"{value:.4g}"
    return str(value)


def _short_names(paths: list[Path]) -> list[str]:
    """Name runs by their folder names, or by the shortest tail of their paths that tells them apart."""
    for depth in range(1, 1 + max((len(p.parts) for p in paths), default=1)):
        names = ["/".join(p.parts[-depth:]) for p in paths]
        if len(set(names)) == len(names):
            return names
    return [str(p) for p in paths]


def to_csv(rows: list[dict[str, Any]]) -> str:
    """Return the rows as CSV text (header from the first row's keys)."""
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in rows)
    return buf.getvalue()


def to_json(rows: list[dict[str, Any]]) -> str:
    """Return the rows as indented JSON text."""
    return json.dumps(rows, indent=2) + "\n"


# ---------------------------------------------------------------------------------------------------------
# The curves


def labels(result: Comparison, limit: int = 60) -> list[str]:
    """Name each run by its folder and its differing keys' values (shortened to ``limit`` characters)."""
    out = []
    for name, row in zip(_short_names([r.path for r in result.runs]), result.rows):
        parts = [f"{k.rsplit('.', 1)[-1]}={_cell(row[k])}" for k in result.keys]
        text = f"{name}: {', '.join(parts)}" if parts else name
        out.append(text if len(text) <= limit else text[: limit - 1] + "…")
    return out


def curve_series(result: Comparison, x: str) -> list[dict[str, list[float]]]:
    """Per run, the x values (step, epoch or cumulative seconds) and the four curves."""
    if x not in X_AXES:
        raise CnnlabError(f"--x {x!r} is not one of {', '.join(X_AXES)}")
    series = []
    for run in result.runs:
        h = run.history
        xs = _cumulative([row.get("seconds", 0.0) for row in h]) if x == "seconds" else [row[x] for row in h]
        series.append({"x": xs, **{k: [row.get(k, math.nan) for row in h]
                                   for k in ("accuracy", "val_accuracy", "loss", "val_loss")}})
    return series


def _cumulative(values: list[float]) -> list[float]:
    total, out = 0.0, []
    for v in values:
        total += v
        out.append(total)
    return out


def write_curves(result: Comparison, png: str | Path, x: str = "epoch") -> list[Path]:
    """Write the overlay PNG and, beside it, a CSV of every plotted point; return both paths."""
    from cnnlab import plots
    from cnnlab.files import write_text

    png = Path(png)
    if png.suffix.lower() != ".png":
        raise CnnlabError(f"--out {png}: name a .png file")
    series, names = curve_series(result, x), labels(result)
    paths = [plots.save_figure(plots.compare_figure(series, names, x), png)]
    rows = [{"run": str(run.path), x: xs, **{k: s[k][i] for k in ("accuracy", "val_accuracy", "loss", "val_loss")}}
            for run, s in zip(result.runs, series) for i, xs in enumerate(s["x"])]
    paths.append(write_text(png.with_suffix(".csv"), to_csv(rows)))
    return paths


class _CallableModule(types.ModuleType):
    """Importing ``cnnlab.compare`` binds the module to the package's ``compare`` attribute, hiding the function
    of the same name; calling the module calls the function, so ``cnnlab.compare([...])`` works either way."""

    def __call__(self, runs: Iterable[str | Path] | str | Path, echo: Echo | None = None) -> list[dict[str, Any]]:
        return compare(runs, echo=echo)


sys.modules[__name__].__class__ = _CallableModule
