"""Serve the lab with uvicorn: on 127.0.0.1 by default; any other host only with a random access token."""

from __future__ import annotations

import secrets
import socket
import webbrowser
from pathlib import Path
from typing import Callable

from cnnlab.errors import CnnlabError
from cnnlab.extras import require

DEFAULT_PORT = 8350
LOCAL = ("127.0.0.1", "localhost", "::1")


def needs_token(host: str) -> bool:
    """True for a host other than the loopback names: then requests must carry a token."""
    return host not in LOCAL


def url(host: str, port: int, token: str | None, run: str | None = None) -> str:
    """The address to open: with ``?token=`` when there is one, and ``#explore/RUN`` for a run."""
    shown = f"[{host}]" if ":" in host else host
    query = f"?token={token}" if token else ""
    return f"http://{shown}:{port}/{query}" + (f"#explore/{run}" if run else "")


def serve(root: str | Path, host: str = "127.0.0.1", port: int = DEFAULT_PORT, open_browser: bool = False,
          run: str | None = None, echo: Callable[[str], None] = print, device: str = "auto") -> None:
    """Serve the lab for the run folders under ``root`` until Ctrl-C.

    Args:
        root: the folder of run folders.
        host: the address to bind; anything but 127.0.0.1/localhost/::1 gets an access token, printed once.
        port: the TCP port.
        open_browser: open the page in the default browser.
        run: a run name to open the page on.
        echo: where the address goes.
        device: where the runs' models run (``auto``, ``cpu`` or ``cuda``).
    """
    uvicorn = require("uvicorn", "lab", "cnnlab lab")
    from cnnlab.lab.api import create_app

    if not 0 < port < 65536:
        raise CnnlabError(f"--port {port}: give a TCP port 1..65535 (default {DEFAULT_PORT})")
    _check_free(host, port)
    token = secrets.token_urlsafe(24) if needs_token(host) else None
    app = create_app(root, token=token, device=device)
    address = url(host, port, token, run)
    # an open event stream must not hold Ctrl-C up: open connections get 2 s to finish
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                            timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    echo(f"cnnlab lab: serving the runs under {Path(root).resolve()}")
    if token:
        echo(f"  open {address}")
        echo("  (the token is shown only now; anyone with this URL can use the lab)")
    else:
        echo(f"  open {address}")
    echo("  stop it with Ctrl-C")
    if open_browser:
        webbrowser.open(address)
    try:
        server.run()
    except SystemExit:  # uvicorn's answer to a failed start, after logging why
        raise CnnlabError(f"cannot serve on {host}:{port}; choose another --port or --host") from None


def _check_free(host: str, port: int) -> None:
    """Bind the address once, as uvicorn will, to say in one line why it cannot be served."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as exc:
        raise CnnlabError(f"cannot serve on {host}:{port} ({exc.strerror or exc}); "
                          "choose another --port, or a --host of this machine") from None
