"""``python -m benchmarks.access_log``: the access log's own CPU cost per request, in isolation.

The access log wraps every request (``medserve.serving.access_log.AccessLog``). This times the
ASGI call of a trivial app answering like the fast path (a status and an ``X-Request-ID``), bare
and wrapped (text and JSON lines written to /dev/null), and reports the best of several runs:
the wrapper's added µs per request, to compare with the ~100 µs of worker CPU a single-row
prediction costs (``python -m benchmarks.governance --cpu``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from typing import Any

from medserve.serving.access_log import AccessLog

_HEADERS = [(b"content-type", b"application/json"), (b"x-request-id", b"0193abcdef0123456789")]
_SCOPE = {
    "type": "http",
    "method": "POST",
    "path": "/v2/models/m/infer",
    "headers": [(b"host", b"x"), (b"content-type", b"application/json"), (b"authorization", b"x")],
}


async def _app(scope: Any, receive: Any, send: Any) -> None:
    scope["medserve.hot_path"] = ("v2", "m", None)
    await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
    await send({"type": "http.response.body", "body": b"{}"})


async def _send(message: Any) -> None:
    return None


async def _receive() -> Any:
    return {}


async def _best(app: Any, calls: int, runs: int) -> float:
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        for _ in range(calls):
            await app(dict(_SCOPE), _receive, _send)
        best = min(best, (time.perf_counter() - started) / calls * 1e6)
    return best


async def _main(calls: int, runs: int) -> None:
    sink = os.open(os.devnull, os.O_WRONLY)
    bare = await _best(_app, calls, runs)
    text = await _best(AccessLog(_app, "text", fd=sink), calls, runs)
    json_lines = await _best(AccessLog(_app, "json", fd=sink), calls, runs)
    print(
        f"best of {runs} runs x {calls} calls: bare {bare:.2f} µs; access log text "
        f"+{text - bare:.2f} µs, json +{json_lines - bare:.2f} µs per request"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args(argv)
    asyncio.run(_main(args.calls, args.runs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
