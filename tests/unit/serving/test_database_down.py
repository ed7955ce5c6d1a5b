"""PostgreSQL gone from the network (a loopback proxy in front of it, cut and restored): under the
default policy predictions answer 503 and readiness 503 once the writers find the store down,
the predictions answered before that are kept (journaled) and written when it is back, and
serving resumes; nothing answered 200 is missing from the audit trail or the prediction log."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from tests.support import TcpProxy, wait_for
from tests.unit.serving.inprocess_app import MODEL, create_key, make_template, records, serve

from medserve.core.audit import AuditLog, load_audit_keys
from medserve.core.context import stored_request_id
from medserve.core.phi import load_or_create_salt
from medserve.core.store.monitoring import MonitoringStore
from medserve.serving.extensions.security import AUDIT_LOG

POSTGRES_ENV = "MEDSERVE_TEST_POSTGRES_URI"
PATH = f"/v1/models/{MODEL}/predict"


@pytest.fixture
def proxied_postgres(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Path, TcpProxy, str]]:
    """A home whose store is a fresh PostgreSQL schema reached through a cuttable proxy."""
    base = os.environ.get(POSTGRES_ENV)
    if not base:
        pytest.skip(f"needs PostgreSQL: set {POSTGRES_ENV} (run .ci/run)")
    url = sa.engine.make_url(base)
    schema = f"medserve_down_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(base)
    with admin.begin() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    proxy = TcpProxy((url.host or "127.0.0.1", url.port or 5432))
    through = url.set(host="127.0.0.1", port=proxy.port).update_query_dict(
        {"options": f"-csearch_path={schema}"}
    )
    uri = through.render_as_string(hide_password=False)
    direct = url.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(
        hide_password=False
    )
    monkeypatch.setenv("MEDSERVE_STORE_URI", uri)
    home = tmp_path / "home"
    try:
        make_template(home)
        yield home, proxy, direct
    finally:
        proxy.close()
        with admin.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        admin.dispose()


@pytest.mark.postgres
def test_a_lost_database_refuses_until_it_is_back_and_loses_nothing(
    proxied_postgres: tuple[Path, TcpProxy, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MEDSERVE_AUDIT_FAILURE", raising=False)  # fail_closed, the default
    home, proxy, direct = proxied_postgres
    headers = create_key(home, ["admin"])
    body = {"instances": records(1)}
    statuses: dict[str, int] = {}
    with serve(home, security=True) as (client, resources):
        audit = resources.get(AUDIT_LOG)

        def predict(rid: str) -> int:
            answer = client.post(PATH, json=body, headers={**headers, "X-Request-ID": rid})
            statuses[rid] = answer.status_code
            return answer.status_code

        assert predict("before") == 200
        proxy.cut()
        n = 0

        def refused() -> bool:  # answered meanwhile: journaled, to be written when it is back
            nonlocal n
            n += 1
            return predict(f"during-{n}") == 503

        wait_for(refused, timeout_s=60, what="predictions to be refused while it is down")
        assert audit.failure is not None
        assert "cannot be written" in client.post(PATH, json=body, headers=headers).json()["error"]
        assert client.get("/v2/health/ready").status_code == 503
        proxy.restore()
        wait_for(
            lambda: client.get("/v2/health/ready").status_code == 200,
            timeout_s=60,
            what="readiness once the database is back",
        )
        assert predict("after") == 200
    answered = {rid for rid, status in statuses.items() if status == 200}
    assert {"before", "after"} <= answered
    salt = load_or_create_salt(home)
    expected = {stored_request_id(rid, None, salt) for rid in answered}
    engine = sa.create_engine(direct)
    try:
        trail = AuditLog(engine, keys=load_audit_keys(home))
        result = trail.verify()
        audited = {e["request_id"]: e["outcome"] for e in trail.entries() if e["request_id"]}
        logged = {p.rpartition("-")[0] for p in MonitoringStore(engine).prediction_ids(MODEL)}
    finally:
        engine.dispose()
    assert result.ok, result.reason
    assert {audited.get(rid) for rid in expected} == {200}  # nothing acknowledged unaudited
    assert expected <= logged
