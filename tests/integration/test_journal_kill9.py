"""kill -9 of a real 2-worker server under load loses nothing it acknowledged: every prediction
answered 200 is, after a restart, in the audit trail and the prediction log exactly once (the
workers' journals are replayed), and the chain verifies."""

from __future__ import annotations

import os
import signal
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from tests.support import start_server, writable_demo_home

from medserve.core.audit import AuditLog, load_audit_keys
from medserve.core.context import stored_request_id
from medserve.core.journal import journal_dir
from medserve.core.phi import load_or_create_salt
from medserve.core.registry.service import Registry
from medserve.core.settings import Settings
from medserve.core.store.monitoring import MonitoringStore

MODEL = "breast-cancer"
REQUESTS = 400
CALLERS = 8


def test_kill_9_under_load_then_restart_loses_nothing_acknowledged(
    demo_home: Path, tmp_path: Path
) -> None:
    home, row = writable_demo_home(demo_home, tmp_path / "home")
    # a writer interval long enough that the store holds almost none of it when the kill comes
    env = {"MEDSERVE_MONITOR_FLUSH_INTERVAL_S": "30"}
    server = start_server(home, workers=2, env=env)
    acknowledged: list[str] = []
    try:
        with httpx.Client(base_url=server.url, headers=server.headers, timeout=30) as client:

            def call(i: int) -> str | None:
                rid = f"k9-{i}"
                answer = client.post(
                    f"/v1/models/{MODEL}/predict",
                    json={"instances": [row]},
                    headers={"X-Request-ID": rid, "X-Patient-ID": f"MRN-{i % 7}"},
                )
                return rid if answer.status_code == 200 else None

            with ThreadPoolExecutor(CALLERS) as pool:
                acknowledged = [rid for rid in pool.map(call, range(REQUESTS)) if rid]
    finally:
        os.killpg(server.process.pid, signal.SIGKILL)  # the supervisor and both workers
        server.process.wait()
    assert len(acknowledged) == REQUESTS
    left = list(journal_dir(home).rglob("*.jnl"))
    assert any(p.stat().st_size for p in left), "the kill came after everything was stored"
    journaled = b"".join(p.read_bytes() for p in left)
    assert b"MRN-" not in journaled  # journaled de-identified: patients as pseudonyms
    assert b"k9-" not in journaled  # and a caller's request ids keyed

    restarted = start_server(home, workers=2)  # the workers replay what the dead ones left
    assert restarted.stop() == 0  # a clean stop: everything written
    assert "Traceback" not in restarted.log()

    salt = load_or_create_salt(home)
    expected = {stored_request_id(rid, None, salt) for rid in acknowledged}
    registry = Registry.open(Settings(home=home))
    try:
        engine = registry.store.engine  # type: ignore[attr-defined]
        trail = AuditLog(engine, keys=load_audit_keys(home))
        result = trail.verify()
        audited = Counter(
            e["request_id"]
            for e in trail.entries()
            if e["action"] == "predict" and e["request_id"] in expected
        )
        replayed = [e for e in trail.entries() if e["action"] == "audit_replayed"]
        gaps = [e for e in trail.entries() if e["action"] in {"audit_gap", "audit_overflow"}]
        logged = Counter(
            pid.rpartition("-")[0] for pid in MonitoringStore(engine).prediction_ids(MODEL)
        )
    finally:
        registry.close()
    assert result.ok, result.reason
    assert set(audited) == expected  # 0 acknowledged predictions missing from the audit trail
    assert set(audited.values()) == {1}  # and none twice
    assert expected <= set(logged)  # 0 missing from the prediction log
    assert {logged[rid] for rid in expected} == {1}
    assert replayed  # the restart found the journals and said so in the chain
    assert gaps == []
    assert not any(p.stat().st_size for p in journal_dir(home).rglob("*.jnl"))
