"""Runs as TensorBoard event files: per-epoch scalars, the config as text, a sweep trial's values as HParams.

One sub-folder of the output folder per run, so TensorBoard lists the runs by name. Written with the writer that
ships with torch (``torch.utils.tensorboard``), which needs the ``tensorboard`` package (``cnnlab[tensorboard]``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable

from cnnlab import store
from cnnlab.errors import CnnlabError

Echo = Callable[[str], None]
SCALARS = ("loss", "accuracy", "val_loss", "val_accuracy", "lr")
TRIAL_RECORD = "trial.json"


def export_tensorboard(runs: Iterable[str | Path] | str | Path, out: str | Path) -> list[Path]:
    """Write one TensorBoard run folder ``out/<run name>`` per run; return those folders.

    Args:
        runs: run folders, globs, or folders of runs (a sweep folder exports every trial).
        out: the TensorBoard log folder (``tensorboard --logdir OUT``). A run whose folder there already holds
            event files is refused, so an export never doubles or overwrites another.
    """
    from cnnlab.compare import _short_names, find_runs
    from cnnlab.extras import require

    require("tensorboard", "tensorboard", "cnnlab export --tensorboard")
    from torch.utils.tensorboard import SummaryWriter

    paths = find_runs(runs)
    targets = [Path(out) / name for name in _short_names(paths)]
    for target in targets:
        if any(target.glob("events.out.tfevents.*")):
            raise CnnlabError(f"--tensorboard {out}: {target} already holds TensorBoard events; "
                              "choose another folder (an export never adds to or overwrites one)")
    for run, target in zip(paths, targets):
        writer = SummaryWriter(log_dir=str(target))
        try:
            _write_run(writer, run)
        finally:
            writer.close()
    return targets


def _write_run(writer: Any, run: Path) -> None:
    history = store.read_history(run)
    wall = _start_time(run)
    for row in history:
        wall += row.get("seconds", 0.0)
        for key in SCALARS:
            if key in row:
                writer.add_scalar(key, row[key], global_step=row["epoch"], walltime=wall)
    config = (run / store.CONFIG).read_text()
    writer.add_text("config", "    " + config.replace("\n", "\n    "), global_step=0)  # indented: a code block
    trial = run / TRIAL_RECORD
    if trial.is_file():
        _write_hparams(writer, store.read_json(trial))


def _start_time(run: Path) -> float:
    """The run's first training start as a Unix time (from provenance.json), else the folder's time."""
    import datetime as dt

    path = run / store.PROVENANCE
    if path.is_file():
        sessions = store.read_json(path).get("sessions", [])
        if sessions and sessions[0].get("start"):
            return dt.datetime.fromisoformat(sessions[0]["start"]).timestamp()
    return (run / store.CONFIG).stat().st_mtime


def _write_hparams(writer: Any, record: dict[str, Any]) -> None:
    """A sweep trial: its sampled values and its metric in TensorBoard's HParams format."""
    from torch.utils.tensorboard.summary import hparams

    values = {k: v for k, v in record.get("params", {}).items() if isinstance(v, (int, float, str, bool))}
    metric = f"hparam/{record.get('metric', 'value')}"
    value = record.get("value")
    result = {metric: float(value)} if isinstance(value, (int, float)) else {}
    experiment, start, end = hparams(values, result)
    for summary in (experiment, start, end):
        writer.file_writer.add_summary(summary)
    if result:
        writer.add_scalar(metric, result[metric], global_step=record.get("epochs", 0))
