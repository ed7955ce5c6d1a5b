"""A real 2-worker server whose home fills up (a 24 MB tmpfs): under the default policy
predictions answer 503 and readiness 503 while nothing can be recorded, no worker dies (the
metrics files are allocated, not sparse: no SIGBUS), and once there is room again serving
resumes; every prediction answered 200 is then in the audit trail and the prediction log."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tests.support import fill_disk, small_tmpfs, start_server, wait_for, writable_demo_home

from medserve.core.audit import AuditLog, load_audit_keys
from medserve.core.context import stored_request_id
from medserve.core.phi import load_or_create_salt
from medserve.core.registry.service import Registry
from medserve.core.settings import Settings
from medserve.core.store.monitoring import MonitoringStore

MODEL = "breast-cancer"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with small_tmpfs(tmp_path / "disk", "24m") as mount:
        yield mount


def test_a_full_home_refuses_until_there_is_room_and_loses_nothing(
    demo_home: Path, small_disk: Path
) -> None:
    home, row = writable_demo_home(demo_home, small_disk / "home")
    server = start_server(home, workers=2)
    statuses: dict[str, int] = {}
    try:
        with httpx.Client(base_url=server.url, headers=server.headers, timeout=30) as client:

            def predict(rid: str) -> int:
                answer = client.post(
                    f"/v1/models/{MODEL}/predict",
                    json={"instances": [row]},
                    headers={"X-Request-ID": rid},
                )
                statuses[rid] = answer.status_code
                return answer.status_code

            assert [predict(f"warm-{i}") for i in range(10)] == [200] * 10
            filler = fill_disk(small_disk)
            for i in range(40):
                assert predict(f"full-{i}") in {200, 503}
            assert 503 in {statuses[f"full-{i}"] for i in range(40)}
            wait_for(
                lambda: client.get("/v2/health/ready").status_code == 503,
                timeout_s=30,
                what="readiness to report the full disk",
            )
            refused = client.post(f"/v1/models/{MODEL}/predict", json={"instances": [row]})
            assert refused.status_code == 503
            assert "cannot be written" in refused.json()["error"]
            filler.unlink()  # room again
            wait_for(
                lambda: client.get("/v2/health/ready").status_code == 200,
                timeout_s=60,
                what="readiness to recover",
            )
            assert [predict(f"after-{i}") for i in range(10)] == [200] * 10
    finally:
        code = server.stop()
    log = server.log()
    assert code == 0
    assert "died" not in log  # no worker was lost
    assert "SIGBUS" not in log
    acknowledged = {rid for rid, status in statuses.items() if status == 200}
    salt = load_or_create_salt(home)
    expected = {stored_request_id(rid, None, salt) for rid in acknowledged}
    registry = Registry.open(Settings(home=home))
    try:
        engine = registry.store.engine  # type: ignore[attr-defined]
        trail = AuditLog(engine, keys=load_audit_keys(home))
        assert trail.verify().ok
        audited = {e["request_id"]: e["outcome"] for e in trail.entries() if e["request_id"]}
        logged = {p.rpartition("-")[0] for p in MonitoringStore(engine).prediction_ids(MODEL)}
    finally:
        registry.close()
    assert {audited.get(rid) for rid in expected} == {200}  # nothing acknowledged unaudited
    assert expected <= logged
