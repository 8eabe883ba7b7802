"""The lab's HTTP face: the JSON API, the live event stream and the page, as one Starlette app.

| route | what |
|---|---|
| ``GET /`` | the page (``static/index.html``); ``/static/app.js``, ``/static/style.css`` |
| ``GET /api/runs`` | every run under the root: name, group, epochs, planned_epochs, val_accuracy, best_val_accuracy, status |
| ``GET /api/runs/{name}`` | one run: its row of ``/api/runs``, config, history, layer table, progress |
| ``GET /api/runs/{name}/events`` | server-sent events: ``progress`` (about every second while it trains), ``history`` (after each epoch) |
| ``POST /api/runs/{name}/predict`` | ``{"pixels": 28 x 28 ints}`` -> probabilities, predicted, every conv/pool layer's maps |
| ``POST /api/runs/{name}/gradcam`` | ``{"pixels", "class"?, "layer"?}`` -> Grad-CAM and gradient saliency |
| ``GET /api/runs/{name}/images?index=N`` or ``?label=C&nth=K`` | a test image, its label and prediction |
| ``GET /api/runs/{name}/mistakes?count=N`` | the most confident mistakes on the test set |
| ``GET /api/runs/{name}/maps/{layer}/{map}`` | a map's filter pattern, its top 9 test images, its mean per class |
| ``GET /api/runs/{name}/files`` and ``/files/{path}`` | the run's pictures, report and records |
| ``GET /api/compare?runs=a,b`` | the rows of ``cnnlab.compare`` and the differing config keys |

Every error is a JSON ``{"error": "one line"}`` with a 4xx status (503 when the worker queue is full).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import json
import math
import os
import time
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

from cnnlab import store
from cnnlab.device import resolve_device
from cnnlab.errors import CnnlabError
from cnnlab.extras import require
from cnnlab.lab import explore, runs
from cnnlab.lab.worker import Busy, Worker

require("starlette", "lab", "cnnlab lab")

from starlette.applications import Starlette  # noqa: E402
from starlette.exceptions import HTTPException  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse  # noqa: E402
from starlette.routing import Route  # noqa: E402

MAX_BODY = 64 * 1024  # bytes; a 28 x 28 image as JSON is under 4 KB
STATIC = ("index.html", "app.js", "style.css")
FILE_TYPES = {".png": "image/png", ".html": "text/html", ".json": "application/json", ".csv": "text/csv",
              ".toml": "text/plain"}
POLL = 0.5  # seconds between two looks at a watched run's files (training rewrites its progress once a second)
HEARTBEAT = 15.0
TOKEN_COOKIE = "cnnlab_lab_token"
LOCAL_HOSTS = ("127.0.0.1", "localhost", "[::1]", "::1")

_STATUS = {runs.NotFound: 404, explore.BadInput: 400, runs.RunChanging: 409, Busy: 503}


class LabJSON(JSONResponse):
    """JSON where NaN and infinities become null (a history can hold NaN; JSON cannot)."""

    def render(self, content: Any) -> bytes:  # noqa: D102
        return json.dumps(_finite(content), separators=(",", ":")).encode("utf-8")


def create_app(root: str | Path, token: str | None = None, worker: Worker | None = None,
               device: str = "auto") -> Starlette:
    """Build the lab's app for the run folders under ``root``.

    Args:
        root: the folder whose run folders (at any depth up to 4) are served; nothing outside it is.
        token: when set, every request must carry it (``?token=``, ``Authorization: Bearer``, or the cookie
            the page gets on its first load); without it, only requests to a local host name are answered.
        worker: the thread that does the torch work (a new one by default).
        device: where the runs' models run: ``auto`` (CUDA where torch sees a GPU, else the CPU), ``cpu`` or
            ``cuda``.
    """
    root = Path(root).resolve()
    if not root.is_dir():
        raise CnnlabError(f"--root {root}: no such folder; give the folder that holds your run folders")
    lab = _Lab(root, worker or Worker(), explore.Explorer(device=resolve_device(device, "--device")))
    routes = [
        Route("/", lab.page), Route("/static/{file}", lab.static),
        Route("/api/runs", lab.list_runs), Route("/api/compare", lab.compare),
        Route("/api/runs/{name:path}/events", lab.events),
        Route("/api/runs/{name:path}/predict", lab.predict, methods=["POST"]),
        Route("/api/runs/{name:path}/gradcam", lab.gradcam, methods=["POST"]),
        Route("/api/runs/{name:path}/images", lab.image), Route("/api/runs/{name:path}/mistakes", lab.mistakes),
        Route("/api/runs/{name:path}/maps/{layer}/{map}", lab.map_story),
        Route("/api/runs/{name:path}/files", lab.files), Route("/api/runs/{name:path}/files/{file:path}", lab.file),
        Route("/api/runs/{name:path}", lab.detail),
    ]
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        lab.worker.close()

    handlers = {HTTPException: _http_error, CnnlabError: _user_error, Exception: _unexpected}
    app = Starlette(routes=routes, exception_handlers=handlers, lifespan=lifespan)
    app.state.lab = lab
    return _Guard(app, token)


def error(status: int, message: str) -> Response:
    """The lab's error answer: ``{"error": message}`` with ``status``."""
    return LabJSON({"error": message}, status_code=status)


class _Guard:
    """ASGI wrapper: the access token (when there is one), local host names (when there is none), errors as JSON."""

    def __init__(self, app: Starlette, token: str | None):
        self.app, self.token = app, token
        self.state = app.state

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "http":
            refusal = self._refuse(scope)
            if refusal is not None:
                await refusal(scope, receive, send)
                return
            if self.token and _query(scope).get("token") and scope["path"] == "/":
                send = _with_cookie(send, self.token)
        await self.app(scope, receive, send)

    def _refuse(self, scope: dict) -> Response | None:
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        if self.token is None:
            host = headers.get("host", "").rsplit(":", 1)[0] if not headers.get("host", "").endswith("]") \
                else headers.get("host", "")
            if host not in LOCAL_HOSTS:  # a page of another site reaching us through DNS rebinding
                return error(403, f"host {host!r} refused: the lab answers to 127.0.0.1 or localhost only")
            return None
        given = [_query(scope).get("token", ""), headers.get("authorization", "").removeprefix("Bearer "),
                 _cookies(headers.get("cookie", "")).get(TOKEN_COOKIE, "")]
        if any(g and hmac.compare_digest(g.encode(), self.token.encode()) for g in given):
            return None
        return error(401, "this lab needs its access token: open the URL it printed (…/?token=…), "
                          "or send 'Authorization: Bearer TOKEN'")


def _answered(method: Callable[[Any, Request], Awaitable[Any]]) -> Callable[[Any, Request], Awaitable[Response]]:
    """A route handler from a method that reads the request and asks the worker: its result as JSON with a
    ``Server-Timing`` header (the milliseconds from the request to the encoded answer), or its error."""

    @functools.wraps(method)
    async def handler(self: Any, request: Request) -> Response:
        started = time.perf_counter()
        try:
            response = LabJSON(await method(self, request))
        except (CnnlabError, OSError) as exc:
            return _error_for(exc)
        response.headers["Server-Timing"] = f"app;dur={(time.perf_counter() - started) * 1000:.2f}"
        return response

    return handler


class _Lab:
    """The route handlers, sharing the root, the worker thread and the loaded runs."""

    def __init__(self, root: Path, worker: Worker, explorer: explore.Explorer):
        self.root, self.worker, self.explorer = root, worker, explorer

    # -- page -------------------------------------------------------------------------------------------

    async def page(self, request: Request) -> Response:
        return _static_file("index.html")

    async def static(self, request: Request) -> Response:
        name = request.path_params["file"]
        if name not in STATIC:
            return error(404, f"no file {name!r}; the page's files: {', '.join(STATIC)}")
        return _static_file(name)

    # -- runs -------------------------------------------------------------------------------------------

    async def list_runs(self, request: Request) -> Response:
        return await _answer(lambda: [runs.summary(self.root, f) for f in runs.find_runs(self.root)])

    async def detail(self, request: Request) -> Response:
        return await _answer(lambda: self._detail(self._folder(request)))

    def _detail(self, folder: Path) -> dict[str, Any]:
        row = runs.summary(self.root, folder)
        model = runs._read_json(folder / store.MODEL, default=None)
        layers = model["layers"] if isinstance(model, dict) else []
        return {**row, "history": runs.read_history(folder), "progress": runs.read_progress(folder),
                "config": _read_toml(folder / store.CONFIG), "layers": layers,
                "classes": layers[-1]["output_shape"][0] if layers else None}

    async def compare(self, request: Request) -> Response:
        names = [n for part in request.query_params.getlist("runs") for n in part.split(",") if n]
        if not names:
            return error(400, "give the runs to compare: /api/compare?runs=NAME,NAME")

        def rows() -> dict[str, Any]:
            from cnnlab.compare import comparison

            folders = [runs.resolve(self.root, n) for n in names]
            result = comparison(folders)
            name_of = {f.resolve(): n for f, n in zip(folders, names)}
            for row in result.rows:
                row["run"] = name_of.get(Path(row["run"]).resolve(), row["run"])
            root = f"{self.root.resolve()}/"
            return {"rows": result.rows, "differing_keys": result.keys,
                    "skipped": [line.replace(root, "") for line in result.skipped]}

        return await _answer(rows)

    async def events(self, request: Request) -> Response:
        return StreamingResponse(self._stream(request, self._folder(request)), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def _stream(self, request: Request, folder: Path) -> AsyncIterator[str]:
        seen: dict[str, Any] = {}
        quiet = 0.0
        while not await request.is_disconnected():
            sent = False
            for kind, path in (("progress", folder / store.PROGRESS), ("history", store.commit_marker(folder))):
                stamp = _file_stamp(path)
                if stamp != seen.get(kind):
                    payload = _event_payload(kind, folder, path)
                    if payload is not None:
                        seen[kind] = stamp
                        yield f"event: {kind}\ndata: {json.dumps(_finite(payload))}\n\n"
                        sent = True
            quiet = 0.0 if sent else quiet + POLL
            if quiet >= HEARTBEAT:
                quiet = 0.0
                yield ": still here\n\n"
            await asyncio.sleep(POLL)

    # -- explore ----------------------------------------------------------------------------------------

    @_answered
    async def predict(self, request: Request) -> Any:
        pixels = explore.check_pixels(_field(await _json_body(request), "pixels"))
        return await self._on_run(request, explore.predict, pixels)

    @_answered
    async def gradcam(self, request: Request) -> Any:
        body = await _json_body(request)
        pixels = explore.check_pixels(_field(body, "pixels"))
        target = _optional_int(body.get("class"), "class")
        layer = body.get("layer")
        if layer is not None and not isinstance(layer, str):
            raise explore.BadInput(f"layer must be a layer name (a string), got {layer!r}")
        return await self._on_run(request, explore.grad_cam, pixels, target, layer)

    @_answered
    async def image(self, request: Request) -> Any:
        q = request.query_params
        index, label = _query_int(q, "index"), _query_int(q, "label")
        nth = _query_int(q, "nth", default=0)
        return await self._on_run(request, explore.test_image, index, label, nth)

    @_answered
    async def mistakes(self, request: Request) -> Any:
        count = _query_int(request.query_params, "count", default=24)
        return await self._on_run(request, explore.mistakes, count)

    @_answered
    async def map_story(self, request: Request) -> Any:
        raw = request.path_params["map"]
        if not raw.isdigit():
            raise runs.NotFound(f"map {raw!r}: a map is a number 0, 1, 2, ...")
        return await self._on_run(request, explore.map_story, request.path_params["layer"], int(raw))

    async def _on_run(self, request: Request, func: Callable[..., Any], *inputs: Any) -> Any:
        """``func(the request's run, loaded, *inputs)`` on the worker thread."""
        loaded = await self.worker.call(self.explorer.get, self._folder(request))
        return await self.worker.call(func, loaded, *inputs)

    # -- files ------------------------------------------------------------------------------------------

    async def files(self, request: Request) -> Response:
        def listing() -> list[dict[str, Any]]:
            folder = self._folder(request)
            found = []
            for path in sorted(folder.rglob("*")):
                rel = path.relative_to(folder)
                if (path.suffix in FILE_TYPES and path.is_file() and len(rel.parts) <= 3
                        and not any(p.startswith(".") for p in rel.parts)):
                    found.append({"path": rel.as_posix(), "bytes": path.stat().st_size})
            return found

        return await _answer(listing)

    async def file(self, request: Request) -> Response:
        path = _inside(self._folder(request), request.path_params["file"])
        headers = {"Content-Security-Policy": "sandbox; default-src 'none'; img-src data:; style-src 'unsafe-inline'"}
        return FileResponse(path, media_type=FILE_TYPES[path.suffix], headers=headers)

    def _folder(self, request: Request) -> Path:
        return runs.resolve(self.root, request.path_params["name"])


# ---------------------------------------------------------------------------------------------------------


async def _answer(func: Callable[[], Any]) -> Response:
    """Run a quick file-reading function and answer its result as JSON, or its error."""
    try:
        return LabJSON(func())
    except (CnnlabError, OSError) as exc:
        return _error_for(exc)


def _error_for(exc: Exception) -> Response:
    if isinstance(exc, OSError):  # a file vanished or changed between two looks: the run is being written
        return error(409, f"a file of this run could not be read ({exc.__class__.__name__}); try again")
    status = next((code for kind, code in _STATUS.items() if isinstance(exc, kind)), 409)
    return error(status, str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__)


async def _json_body(request: Request) -> dict[str, Any]:
    """The request's JSON object, read up to ``MAX_BODY`` bytes (413 past that)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY:
        raise _TooLarge()
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise _TooLarge()
        chunks.append(chunk)
    try:
        body = json.loads(b"".join(chunks))
    except (ValueError, UnicodeDecodeError) as exc:
        raise explore.BadInput(f"the body is not valid JSON ({str(exc).splitlines()[0]}); "
                               'send e.g. {"pixels": [[0, ...], ...]}') from None
    if not isinstance(body, dict):
        raise explore.BadInput(f"the body must be a JSON object like {{\"pixels\": ...}}, not {type(body).__name__}")
    return body


class _TooLarge(explore.BadInput):
    def __init__(self) -> None:
        super().__init__(f"the body is larger than {MAX_BODY} bytes; a 28 x 28 image needs under 4 KB")


_STATUS = {_TooLarge: 413, **_STATUS}


def _field(body: dict[str, Any], key: str) -> Any:
    if key not in body:
        raise explore.BadInput(f"the body has no {key!r}; it has: {', '.join(map(repr, body)) or 'nothing'}")
    return body[key]


def _optional_int(value: Any, name: str) -> int | None:
    if value is None:
        return None
    if type(value) is not int:
        raise explore.BadInput(f"{name} must be a whole number, got {value!r}")
    return value


def _query_int(params: Any, name: str, default: int | None = None) -> int | None:
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    if not raw.lstrip("-").isdigit() or len(raw) > 9:
        raise explore.BadInput(f"{name}={raw!r}: expected a whole number")
    return int(raw)


def _inside(folder: Path, rel: str) -> Path:
    """A file of the run folder by its relative path, with ``resolve``'s refusals; only ``FILE_TYPES``."""
    parts = rel.split("/")
    if (rel and "\\" not in rel and "\x00" not in rel and not rel.startswith("/")
            and not any(p in ("", ".", "..") for p in parts)):
        path = (folder / Path(*parts)).resolve()
        if path.is_relative_to(folder) and path.suffix in FILE_TYPES and path.is_file():
            return path
    raise runs.NotFound(f"no file {rel!r} in this run; GET its /files for the list")


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise runs.RunChanging(f"{path.name} is missing; the run folder is incomplete") from None
    except (OSError, ValueError) as exc:
        raise runs.RunChanging(f"{path.name} could not be read ({exc}); try again") from None


def _event_payload(kind: str, folder: Path, path: Path) -> Any:
    try:
        if kind == "progress":
            progress = runs.read_progress(folder)
            history = lambda: runs.read_history(folder)  # noqa: E731 - read only where the progress does not tell
            return None if progress is None else {**progress, "state": runs.status(folder, history, progress)}
        return runs.read_history(folder)
    except (CnnlabError, OSError):
        return None  # being written: the next look will do


def _file_stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def _static_file(name: str) -> Response:
    body = resources.files("cnnlab.lab").joinpath("static", name).read_bytes()
    kind = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
            ".css": "text/css; charset=utf-8"}[os.path.splitext(name)[1]]
    return Response(body, media_type=kind, headers={"Cache-Control": "no-cache"})


async def _http_error(request: Request, exc: HTTPException) -> Response:
    messages = {404: f"no such address: {request.url.path}; the API is listed at GET /api/runs and in the README",
                405: f"{request.method} is not allowed on {request.url.path}"}
    return error(exc.status_code, messages.get(exc.status_code, str(exc.detail)))


async def _user_error(request: Request, exc: CnnlabError) -> Response:
    """A handler's refusal (an unknown run, a bad input) that it did not answer itself: its error answer."""
    return _error_for(exc)


async def _unexpected(request: Request, exc: Exception) -> Response:
    return error(500, f"internal error ({exc.__class__.__name__}); the lab keeps serving")


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _query(scope: dict) -> dict[str, str]:
    from urllib.parse import parse_qsl

    return dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))


def _cookies(header: str) -> dict[str, str]:
    pairs = (part.strip().partition("=") for part in header.split(";") if "=" in part)
    return {k: v for k, _, v in pairs}


def _with_cookie(send: Callable, token: str) -> Callable:
    cookie = f"{TOKEN_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict".encode("latin-1")

    async def sending(message: dict) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), (b"set-cookie", cookie)]}
        await send(message)

    return sending
