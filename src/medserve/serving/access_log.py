"""One access-log line per HTTP request: method, the route's template, status, latency and
medserve's request id.

What a line never holds: the raw path (a model name in a URL may be anyone's text, a patient's
name included), the query, bodies, caller ids (keys, subjects, a caller's own ``X-Request-ID``:
``rid=caller`` then) or addresses. The route is the matched FastAPI route's template, the hot
path's template, or ``-`` for a path that matched nothing.

Cost on the hot path: three clock reads, one wrapped ``send`` and one tuple appended to a list;
the lines are formatted and written to stderr with one ``write`` every half second (and at
shutdown), not one system call per request. ``MEDSERVE_ACCESS_LOG=false`` (``medserve serve
--no-access-log``) turns it off.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import time
import weakref
from datetime import UTC, datetime
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from medserve.serving.fast_path import HOT_PATH_SCOPE_KEY

_HOT_TEMPLATES = {
    ("v2", False): "/v2/models/{name}/infer",
    ("v2", True): "/v2/models/{name}/versions/{version}/infer",
    ("records", False): "/v1/models/{name}/predict",
    ("records", True): "/v1/models/{name}/versions/{version}/predict",
}
FLUSH_INTERVAL_S = 0.5
# what a request leaves for the writer: wall time, method, route template, status, ms, request id
_Entry = tuple[float, str, str, int, float, str]


def route_template(scope: Scope) -> str:
    """The template of the route that answered, never the raw path."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str):
        return path
    hot = scope.get(HOT_PATH_SCOPE_KEY)
    if hot is not None:
        return _HOT_TEMPLATES.get((hot[0], hot[2] is not None), "-")
    return "-"


class AccessLog:
    """ASGI wrapper writing one line per HTTP request (``text`` or ``json`` lines)."""

    def __init__(self, app: ASGIApp, log_format: str = "text", fd: int = 2) -> None:
        self.app = app
        self.json = log_format == "json"
        self.fd = fd
        self._lines: list[_Entry] = []
        self._scheduled = False
        self._second = -1
        self._second_text = ""
        # a weak reference: the exit hook must not keep this app (its models) alive forever
        atexit.register(_flush_at_exit, weakref.ref(self))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            try:
                await self.app(scope, receive, send)
            finally:
                if scope["type"] == "lifespan":
                    self.flush()
            return
        started = time.perf_counter()
        status = 0
        request_id = "-"

        async def logged_send(message: Message) -> None:
            nonlocal status, request_id
            if message["type"] == "http.response.start":
                status = message["status"]
                for key, value in message.get("headers", ()):
                    if key == b"x-request-id":
                        request_id = value.decode("latin-1")
                        break
            await send(message)

        try:
            await self.app(scope, receive, logged_send)
        finally:
            self._log(scope, status, (time.perf_counter() - started) * 1000.0, request_id)

    def _log(self, scope: Scope, status: int, ms: float, request_id: str) -> None:
        if request_id != "-":
            for key, _ in scope["headers"]:
                if key == b"x-request-id":  # the caller's own id: never logged
                    request_id = "caller"
                    break
        # the line is formatted by the writer, once per batch (``flush``), not here
        self._lines.append(
            (time.time(), scope["method"], route_template(scope), status, ms, request_id)
        )
        if not self._scheduled:
            self._scheduled = True
            try:
                asyncio.get_running_loop().call_later(FLUSH_INTERVAL_S, self.flush)
            except RuntimeError:  # no loop (a synchronous test client): write now
                self.flush()

    def _line(self, entry: _Entry) -> str:
        now, method, route, status, ms, request_id = entry
        stamp = self._stamp(now)
        if self.json:
            record: dict[str, Any] = {
                "time": stamp,
                "method": method,
                "route": route,
                "status": status,
                "ms": round(ms, 2),
                "request_id": request_id,
            }
            return orjson.dumps(record).decode() + "\n"
        return f"{stamp} {method} {route} {status} {ms:.1f}ms rid={request_id}\n"

    def _stamp(self, now: float) -> str:
        """UTC time with milliseconds; the date and time of day are formatted once a second
        (``datetime.isoformat`` per line costs more than the rest of the line)."""
        second = int(now)
        if second != self._second:
            self._second = second
            self._second_text = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        return f"{self._second_text}.{int((now - second) * 1000):03d}Z"

    def flush(self) -> None:
        """Write the buffered lines (one ``write``); called on a timer, at shutdown, at exit."""
        self._scheduled = False
        if not self._lines:
            return
        entries, self._lines = self._lines, []
        data = "".join([self._line(entry) for entry in entries]).encode()
        with contextlib.suppress(OSError):  # stderr closed: not worth failing a request for
            os.write(self.fd, data)


def _flush_at_exit(ref: weakref.ref[AccessLog]) -> None:
    log = ref()
    if log is not None:
        log.flush()


def loaded_line(served: list[tuple[str, str, int]], failed: list[tuple[str, int]]) -> str:
    """What one worker loaded at start (said once per worker, on stderr): ``name@alias vN``,
    and the versions that failed to load (their errors: ``GET /v1/served``)."""
    loaded = ", ".join(f"{name}@{alias} v{number}" for name, alias, number in sorted(served))
    line = f"worker {os.getpid()} ready: loaded {loaded or 'no model'}"
    if failed:
        names = ", ".join(f"{name} v{number}" for name, number in sorted(failed))
        line += f"; FAILED to load {names} (why: GET /v1/served)"
    return line
