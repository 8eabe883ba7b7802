"""``cnnlab compare | sweep | export``: parse, call ``cnnlab.compare`` / ``cnnlab.sweep`` / ``cnnlab.tboard``, print."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from cnnlab.cli import command


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


def _echo(line: str) -> None:
    print(line, flush=True)


def _write_or_print(target: str | None, text: str) -> None:
    from cnnlab.files import write_text

    if target == "-":
        sys.stdout.write(text)
    elif target:
        _echo(f"wrote {write_text(target, text)}")


@command("compare")
def _compare(args: argparse.Namespace) -> int:
    from cnnlab import compare as cmp

    result = cmp.comparison(args.runs)
    for line in result.skipped:
        print(f"cnnlab: {line}", file=sys.stderr)
    quiet = "-" in (args.csv, args.json)  # the table goes to stdout as data, not as text
    if not quiet:
        _echo(cmp.format_table(result))
    _write_or_print(args.csv, cmp.to_csv(result.rows))
    _write_or_print(args.json, cmp.to_json(result.rows))
    single = Path(args.runs[0])
    default = single / "compare.png" if len(args.runs) == 1 and single.is_dir() and not cmp._is_run(single) \
        else Path("compare.png")
    for path in cmp.write_curves(result, args.out or default, x=args.x):
        if not quiet:
            _echo(f"wrote {path}")
    return 0
