"""``cnnlab compare | sweep`` and ``export --tensorboard``: parse, call ``cnnlab.compare`` / ``sweep`` / ``tboard``, print."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from cnnlab.cli import command, echo


def add_parsers(sub: Any) -> None:
    """Add the experiment subcommands to the ``cnnlab`` parser."""
    p = sub.add_parser("compare", help="runs side by side: differing config keys, accuracies, overlaid curves")
    p.add_argument("runs", nargs="+", help="run folders, globs like 'runs/*', or a folder of runs (a sweep)")
    p.add_argument("--x", choices=("step", "epoch", "seconds"), default="epoch",
                   help="x axis of the curves (default epoch)")
    p.add_argument("--out", type=Path,
                   help="the PNG of the curves, a CSV of its points beside it (default: compare.png, or "
                        "DIR/compare.png for one folder of runs)")
    p.add_argument("--csv", help="also write the table as CSV to this file ('-' for stdout)")
    p.add_argument("--json", help="also write the table as JSON to this file ('-' for stdout)")

    p = sub.add_parser("sweep", help="search hyper-parameters with Optuna; each trial is a run folder DIR/trial-NNNN")
    p.add_argument("file", type=Path, help="a sweep file: a config (it may extend a preset) with a [sweep] table")
    p.add_argument("--trials", type=int, help="total trials of the study, earlier ones included (default: sweep.trials)")
    p.add_argument("--jobs", type=int, default=1, help="trials at once on this machine, one process each (default 1)")
    p.add_argument("--storage", help="an Optuna storage URL shared by several machines, e.g. "
                                     "postgresql://user:pass@host/db (default: DIR/study.journal)")
    p.add_argument("--out", type=Path, help="the sweep folder DIR (default: sweeps/<file name>)")
    p.add_argument("--worker", type=int, help=argparse.SUPPRESS)  # set by the sweep for its worker processes



def _write_or_print(target: str | None, text: str) -> None:
    from cnnlab.files import write_text

    if target == "-":
        sys.stdout.write(text)
    elif target:
        echo(f"wrote {write_text(target, text)}")


@command("compare")
def _compare(args: argparse.Namespace) -> None:
    from cnnlab import compare as cmp

    result = cmp.comparison(args.runs)
    for line in result.skipped:
        print(f"cnnlab: {line}", file=sys.stderr)
    quiet = "-" in (args.csv, args.json)  # the table goes to stdout as data, not as text
    if not quiet:
        echo(cmp.format_table(result))
    _write_or_print(args.csv, cmp.to_csv(result.rows))
    _write_or_print(args.json, cmp.to_json(result.rows))
    single = Path(args.runs[0])
    default = single / "compare.png" if len(args.runs) == 1 and single.is_dir() and not cmp.is_run(single) \
        else Path("compare.png")
    for path in cmp.write_curves(result, args.out or default, x=args.x):
        if not quiet:
            echo(f"wrote {path}")


@command("sweep")
def _sweep(args: argparse.Namespace) -> int:
    from cnnlab import sweep

    if args.worker is None:
        try:
            sweep.run_sweep(args.file, trials=args.trials, jobs=args.jobs, storage=args.storage, out=args.out,
                            echo=echo)
        except KeyboardInterrupt:
            print("cnnlab: interrupted; the trial that was running is marked failed. Run the same command again "
                  "to continue the sweep", file=sys.stderr)
            return 130
        return 0
    from cnnlab.speed import usable_cores

    spec = sweep.load_sweep(args.file)
    out = args.out or Path("sweeps") / args.file.stem
    shared = bool(args.storage and "://" in args.storage)
    sweep.work(spec, out, args.trials or spec.trials, args.storage, max(1, usable_cores() // args.jobs),
               sweep.seed_offset(args.worker, shared), echo=echo)
    return 0


def export_tensorboard(runs: list[Path], out: Path) -> int:
    """``cnnlab export RUN... --tensorboard DIR``: write the event files and name each folder written."""
    from cnnlab.tboard import export_tensorboard as export

    folders = export(runs, out)
    for folder in folders:
        echo(f"wrote {folder}")
    echo(f"view them with: tensorboard --logdir {out}")
    return 0
