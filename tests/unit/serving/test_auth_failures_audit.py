"""Failed authentication is audited per source and minute (one ``auth_failed`` entry per group),
not one entry per 401; a valid request and a 403 keep one entry each; the groups are bounded."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import Any

import pytest
from tests.unit.serving.inprocess_app import MODEL, create_key, records, registry_at, serve
from typer.testing import CliRunner

from medserve.core.audit import AuditEntry, AuditLog, load_audit_keys
from medserve.core.context import stored_request_id
from medserve.core.errors import AuditUnavailableError
from medserve.core.phi import load_or_create_salt
from medserve.faces.cli import app as cli_app
from medserve.serving.auth_failures import (
    ACTION,
    OTHER_SOURCES,
    AuthFailures,
    coarse_path,
)
from medserve.serving.extensions.security import AUTH_FAILURES

MINUTE = 29_000_000  # some minute since the epoch (2025-02-19 21:20 UTC)
PREDICT = f"/v1/models/{MODEL}/predict"


def _entries(home: Path) -> list[dict[str, Any]]:
    with registry_at(home) as registry:
        audit = AuditLog(registry.store.engine, keys=load_audit_keys(home))  # type: ignore[attr-defined]
        return list(audit.entries())


def _count(entry: dict[str, Any]) -> int:
    found = re.match(r"(\d+) requests? refused: ", str(entry["detail"]))
    assert found, entry
    return int(found.group(1))


def test_failed_authentication_is_audited_once_per_source_minute_and_path(home: Path) -> None:
    app_key = create_key(home, ["app"])
    auditor = create_key(home, ["auditor"])
    body = {"instances": records(1)}
    with serve(home, security=True) as (client, resources):
        # a fixed minute: the 50 requests cannot straddle a minute boundary (and the timer
        # writes nothing before the server stops: its minute never closes)
        resources.get(AUTH_FAILURES).clock = lambda: MINUTE * 60 + 30.0
        bad = {"Authorization": "Bearer msk_not-a-key", "X-Request-ID": "bad-key"}
        refused = [client.post(PREDICT, json=body, headers=bad) for _ in range(50)]
        # the middleware's refusals (the FastAPI routes), without any credential
        missing = [client.get(f"/v1/models/Quaxley-Zebulon-{i}") for i in range(3)]
        ok = client.post(PREDICT, json=body, headers={**app_key, "X-Request-ID": "good-1"})
        forbidden = client.post(PREDICT, json=body, headers={**auditor, "X-Request-ID": "no-1"})
    assert {r.status_code for r in refused} == {401}
    assert all(r.headers["www-authenticate"] for r in refused)  # still answered as a 401
    assert {r.status_code for r in missing} == {401}
    assert (ok.status_code, forbidden.status_code) == (200, 403)

    entries = _entries(home)
    failed = [e for e in entries if e["action"] == ACTION]
    by_path = {(e["detail"].split(" on ")[1].split(" between")[0]): e for e in failed}
    assert len(failed) == 2, failed
    predict_group = by_path["/v1/models/{name}/predict"]
    assert _count(predict_group) == 50
    assert "invalid_credential" in predict_group["detail"]
    assert predict_group["detail"].endswith("between 21:20 and 21:21 UTC")
    assert predict_group["client"] == "testclient"
    assert predict_group["outcome"] == 401
    assert predict_group["actor"] == "unauthenticated"
    routes_group = by_path["/v1/models/…"]
    assert _count(routes_group) == 3
    assert "missing_credential" in routes_group["detail"]
    assert sum(e["outcome"] == 401 for e in entries) == 2  # no entry per refused request
    assert "Quaxley" not in str(entries)

    salt = load_or_create_salt(home)
    by_rid = {e["request_id"]: e for e in entries if e["request_id"]}
    assert stored_request_id("bad-key", None, salt) not in by_rid  # counted, not kept
    good = by_rid[stored_request_id("good-1", None, salt)]
    assert (good["action"], good["outcome"], good["actor"]) == ("predict", 200, "key:test")
    denied = by_rid[stored_request_id("no-1", None, salt)]
    assert (denied["action"], denied["outcome"], denied["actor"]) == ("predict", 403, "key:test")

    verified = CliRunner().invoke(cli_app, ["--home", str(home), "audit", "verify"])
    assert verified.exit_code == 0, verified.output


class _Recorder:
    """An audit log stand-in that keeps what is queued (``queue_size``: refuse beyond it)."""

    def __init__(self, queue_size: int | None = None) -> None:
        self.entries: list[AuditEntry] = []
        self.queue_size = queue_size
        self.arrived = asyncio.Event()

    def enqueue(self, entry: AuditEntry) -> None:
        if self.queue_size is not None and len(self.entries) >= self.queue_size:
            raise AuditUnavailableError("the audit trail is behind (its queue is full)")
        self.entries.append(entry)
        self.arrived.set()


def test_open_groups_are_bounded_whatever_the_number_of_sources(home: Path) -> None:
    with registry_at(home) as registry:
        audit = AuditLog(registry.store.engine)  # type: ignore[attr-defined]
        failures = AuthFailures(audit, max_groups=10_000, clock=lambda: MINUTE * 60.0)
        for i in range(10_001):
            failures.count(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", "/v1/…", "invalid")
        for i in range(5_000):  # more new sources: all in the one overflow group
            failures.count(f"172.16.{i // 256}.{i % 256}", "/v1/…", "invalid")
        failures.count("10.0.0.1", "/v1/…", "invalid")  # an open group still counts its own
        assert len(failures) == 10_001
        audit.start()
        failures.close()
        audit.close()
        assert len(failures) == 0
        written = [e for e in audit.entries() if e["action"] == ACTION]
        assert audit.verify().ok
    assert len(written) == 10_001
    [other] = [e for e in written if e["client"] == OTHER_SOURCES]
    assert _count(other) == 5_001
    assert _count(next(e for e in written if e["client"] == "10.0.0.1")) == 2


def test_a_minute_is_written_when_it_closes_and_not_before() -> None:
    recorder = _Recorder()
    offset = 0.0

    def clock() -> float:  # the real clock, moved to 0.1 s before a minute ends
        return time.time() + offset

    now = time.time()
    offset = (MINUTE * 60 + 59.9) - now
    failures = AuthFailures(recorder, clock=clock)  # type: ignore[arg-type]
    for _ in range(7):
        failures.count("192.0.2.7", "/v2/models/{name}/infer", "missing_credential")

    async def run() -> None:
        failures.drive(asyncio.get_running_loop())
        assert recorder.entries == []  # the minute is still open
        await asyncio.wait_for(recorder.arrived.wait(), timeout=10)
        failures.close()

    asyncio.run(run())
    [entry] = recorder.entries
    assert entry.action == ACTION
    assert entry.client == "192.0.2.7"
    assert entry.detail == (
        "7 requests refused: missing_credential on /v2/models/{name}/infer "
        "between 21:20 and 21:21 UTC"
    )


def test_a_group_the_trail_cannot_take_stays_open_for_the_next_minute() -> None:
    recorder = _Recorder(queue_size=1)
    failures = AuthFailures(recorder, clock=lambda: MINUTE * 60.0)  # type: ignore[arg-type]
    failures.count("192.0.2.1", "/v1/…", "invalid_credential")
    failures.count("192.0.2.2", "/v1/…", "invalid_credential")
    assert failures.flush(before_minute=MINUTE + 1) == 1
    assert len(failures) == 1  # kept, not dropped
    recorder.queue_size = None
    assert failures.flush(before_minute=MINUTE + 1) == 1
    assert [e.client for e in recorder.entries] == ["192.0.2.1", "192.0.2.2"]


@pytest.mark.parametrize(
    ("path", "coarse"),
    [
        ("/v1/models/Zebediah-Quillfeather/versions/1", "/v1/models/…"),
        ("/v1/audit", "/v1/audit"),
        ("/metrics", "/metrics"),
        ("/Zebediah/Quillfeather", "/…"),
        ("/v2/987-65-4321/infer", "/v2/…"),
        ("/", "/…"),
    ],
)
def test_a_coarse_path_keeps_only_medserves_route_words(path: str, coarse: str) -> None:
    assert coarse_path(path) == coarse
