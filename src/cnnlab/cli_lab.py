"""``cnnlab lab``: parse, then serve ``cnnlab.lab`` until Ctrl-C."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from cnnlab.cli import command


def add_parsers(sub: Any) -> None:
    """Add ``cnnlab lab`` to the ``cnnlab`` parser."""
    from cnnlab.lab.server import DEFAULT_PORT

    p = sub.add_parser("lab", help="a local web app: runs, live training, draw a digit and look inside, reports")
    p.add_argument("--root", type=Path, default=Path("runs"), help="the folder of run folders (default: runs)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1; any other gets a random access token, printed once)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"TCP port (default {DEFAULT_PORT})")
    p.add_argument("--open", action="store_true", help="open the page in the default browser")
    p.add_argument("--run", help="open the page on this run's Explore view (a name under --root)")
    p.add_argument("--device", default="auto",
                   help="where the models run: auto (CUDA where torch sees a GPU, else the CPU), cpu or cuda")


@command("lab")
def _lab(args: argparse.Namespace) -> None:
    from cnnlab.lab.server import serve

    serve(args.root, host=args.host, port=args.port, open_browser=args.open, run=args.run,
          echo=lambda line: print(line, flush=True), device=args.device)
