"""Language-model budgets shared by a deployment's nodes (``SharedBudgetStore``): two stores on
two connection pools, as two nodes would hold, admit exactly a key's tokens per minute together,
on PostgreSQL; a refusal names the limit; a database that does not answer refuses (503), never
admits on one node's count; the server picks the shared store only with PostgreSQL and
``shared_rate_limits``, and its 429 and usage endpoint work on it."""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from tests import llm_fake
from tests.support import wait_for
from tests.unit.llm.conftest import CHAT
from tests.unit.serving.inprocess_app import create_key, registry_at, serve
from typer.testing import CliRunner

from medserve.core.errors import StoreError
from medserve.faces.cli import app
from medserve.features.llm.budgets import (
    BUDGET_SCOPE,
    BudgetExceededError,
    BudgetStore,
    BudgetUnavailableError,
    Limits,
    Reservation,
    SharedBudgetStore,
    open_budgets,
)
from medserve.features.security.keys import KeyLlmSettings, SecurityStore
from medserve.serving.extensions.llm import LLM_SERVICE
from medserve.serving.http_errors import status_for


def _spend(
    store: SharedBudgetStore, key: str, limits: Limits, tries: int, out: list[Reservation | str]
) -> None:
    """``out``: per try, the reservation, or the name of the limit that refused it."""
    for _ in range(tries):
        try:
            out.append(store.admit(key, limits, 100))
        except BudgetExceededError as refused:
            good = 0 < refused.retry_after_s <= 60  # else recorded as such: the test fails
            out.append(refused.limit if good else f"bad retry-after {refused.retry_after_s}")


@pytest.mark.postgres
def test_two_nodes_admit_exactly_a_keys_tokens_per_minute(migrated_postgres_uri: str) -> None:
    engines = [sa.create_engine(migrated_postgres_uri) for _ in range(2)]  # two nodes' pools
    try:
        stores = [SharedBudgetStore(e) for e in engines]
        limits = Limits(tokens_per_minute=1000)  # ten calls of 100 tokens
        key = f"key{uuid.uuid4().hex[:8]}"
        results: list[list[Reservation | str]] = [[], []]
        threads = [
            threading.Thread(target=_spend, args=(stores[i], key, limits, 10, results[i]))
            for i in range(2)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert not any(t.is_alive() for t in threads)
        done = results[0] + results[1]
        assert len(done) == 20
        assert {r for r in done if isinstance(r, str)} <= {"tokens_per_minute"}
        admitted: dict[int, int] = {}
        for r in done:
            if isinstance(r, Reservation):
                admitted[r.minute] = admitted.get(r.minute, 0) + r.tokens
        digest = hashlib.sha256(key.encode()).hexdigest()[:40]
        with engines[0].connect() as conn:
            stored = dict(
                conn.execute(
                    sa.text(
                        "SELECT window_ms / 1000, total FROM cluster_counters "
                        "WHERE scope = :s AND counter_key = :k"
                    ),
                    {"s": BUDGET_SCOPE, "k": f"mt:{digest}"},
                ).all()
            )
        # the counters hold what was admitted, nothing of the refused calls (rolled back)
        assert {int(k): int(v) for k, v in stored.items()} == admitted
        assert all(tokens <= 1000 for tokens in admitted.values())
        if len(admitted) == 1:  # (a run across a minute's edge gets two windows)
            assert admitted == {next(iter(admitted)): 1000}
            assert sum(isinstance(r, str) for r in done) == 10
    finally:
        for engine in engines:
            engine.dispose()


@pytest.mark.postgres
def test_a_refused_call_leaves_no_trace_and_settling_counts_what_was_used(
    migrated_postgres_uri: str,
) -> None:
    engines = [sa.create_engine(migrated_postgres_uri) for _ in range(2)]
    try:
        one, two = (SharedBudgetStore(e) for e in engines)
        key = f"key{uuid.uuid4().hex[:8]}"
        limits = Limits(requests_per_minute=5, tokens_per_minute=1000, tokens_per_day=5000)
        if time.time() % 60 > 55:  # all of this within one minute's window
            wait_for(lambda: time.time() % 60 < 5, timeout_s=10, what="the next minute")
        first = one.admit(key, limits, 300)
        two.admit(key, limits, 300)
        one.admit(key, limits, 300)
        with pytest.raises(BudgetExceededError) as refused:
            two.admit(key, limits, 300)  # 1200 > 1000
        assert refused.value.limit == "tokens_per_minute"
        assert "tokens_per_minute limit of 1000 tokens per minute" in str(refused.value)
        assert two.window(key)["tokens_this_minute"] == 900  # the refusal added nothing
        one.settle(first, CHAT, 20, 30)  # used 50 of its 300
        assert one.window(key) == {
            "requests_this_minute": 3,
            "tokens_this_minute": 650,
            "requests_today": 3,
            "tokens_today": 650,
        }
        two.admit(key, limits, 350)  # fits now: 1000
        with pytest.raises(BudgetExceededError) as full:
            one.admit(key, limits, 1)
        assert full.value.limit == "tokens_per_minute"
        two.admit(key, Limits(requests_per_minute=5), 1)
        with pytest.raises(BudgetExceededError) as calls:
            one.admit(key, Limits(requests_per_minute=5), 1)
        assert calls.value.limit == "requests_per_minute"
        rows = two.usage(key)
        assert [(r.model, r.requests, r.prompt_tokens, r.completion_tokens) for r in rows] == [
            (CHAT, 1, 20, 30)
        ]
        assert rows[0].day == time.strftime("%Y-%m-%d", time.gmtime())
        assert two.usage(key, since="2999-01-01") == []
    finally:
        for engine in engines:
            engine.dispose()


def test_an_unreachable_database_refuses_with_503_never_admits() -> None:
    engine = sa.create_engine(
        "postgresql+psycopg://nobody:nothing@127.0.0.1:1/none", connect_args={"connect_timeout": 2}
    )
    try:
        store = SharedBudgetStore(engine)
        with pytest.raises(BudgetUnavailableError) as refused:
            store.admit("k", Limits(tokens_per_minute=1000), 10)
        assert status_for(refused.value) == 503
        assert refused.value.code == "budget_unavailable"
        with pytest.raises(StoreError):
            store.settle(Reservation("k", 0, 0, 10), CHAT, 1, 1)  # the API logs it, keeps going
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_the_shared_store_needs_postgres_and_the_setting(
    migrated_postgres_uri: str, tmp_path: Path
) -> None:
    pg = sa.create_engine(migrated_postgres_uri)
    lite = sa.create_engine(f"sqlite:///{tmp_path / 'r.db'}")
    try:
        shared = open_budgets(tmp_path, pg, True)
        assert isinstance(shared, SharedBudgetStore)
        for local in (open_budgets(tmp_path, pg, False), open_budgets(tmp_path, lite, True)):
            assert isinstance(local, BudgetStore)  # one machine: the home's file
            local.close()
    finally:
        pg.dispose()
        lite.dispose()


@pytest.mark.postgres
def test_the_server_counts_in_postgres_and_refuses_with_429_naming_the_limit(
    migrated_postgres_uri: str, fake_llm: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEDSERVE_STORE_URI", migrated_postgres_uri)
    monkeypatch.setenv("MEDSERVE_SHARED_RATE_LIMITS", "true")
    home = tmp_path / "home"
    with registry_at(home) as registry:
        llm_fake.register_fake(registry, CHAT)
    headers = create_key(home, ["app"])
    key_id = headers["Authorization"].split("_")[1]
    with registry_at(home) as registry:
        SecurityStore(registry.store.engine).set_llm_settings(  # type: ignore[attr-defined]
            key_id, KeyLlmSettings(requests_per_minute=2, max_tokens=50), actor="test"
        )
    body: dict[str, Any] = {
        "model": CHAT,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 10,
    }
    with serve(home, security=True) as (client, resources):
        assert isinstance(resources.get(LLM_SERVICE).budgets, SharedBudgetStore)
        if time.time() % 60 > 50:  # both calls and the refusal within one minute's window
            wait_for(lambda: time.time() % 60 < 5, timeout_s=15, what="the next minute")
        for _ in range(2):
            answered = client.post("/openai/v1/chat/completions", json=body, headers=headers)
            assert answered.status_code == 200, answered.text
        refused = client.post("/openai/v1/chat/completions", json=body, headers=headers)
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "requests_per_minute"
        assert "requests_per_minute limit of 2" in refused.json()["error"]["message"]
        assert 1 <= int(refused.headers["retry-after"]) <= 60

        def settled() -> dict[str, Any] | None:
            usage = client.get("/openai/v1/usage", headers=headers).json()
            return usage if usage["days"] and usage["days"][0]["requests"] == 2 else None

        usage = wait_for(settled, timeout_s=10, what="both calls settled")
        assert usage["current"]["requests_this_minute"] == 2
        assert usage["days"][0]["completion_tokens"] == 6  # settled: what was used
    assert not (home / "llm" / "budgets.db").exists()  # nothing counted on this machine alone
    engine = sa.create_engine(migrated_postgres_uri)
    try:
        with engine.connect() as conn:
            stored = conn.execute(sa.text("SELECT key_id, requests FROM llm_usage")).all()
    finally:
        engine.dispose()
    assert [tuple(r) for r in stored] == [(key_id, 2)]


@pytest.mark.postgres
def test_keys_usage_reads_the_shared_usage(
    migrated_postgres_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEDSERVE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MEDSERVE_STORE_URI", migrated_postgres_uri)
    monkeypatch.setenv("MEDSERVE_SHARED_RATE_LIMITS", "true")
    engine = sa.create_engine(migrated_postgres_uri)
    try:
        store = SharedBudgetStore(engine)
        store.settle(store.admit("abc123def456", Limits(), 50), CHAT, 11, 29)
        store.settle(store.admit("abc123def456", Limits(), 50), CHAT, 1, 2)
    finally:
        engine.dispose()
    runner = CliRunner()
    result = runner.invoke(app, ["keys", "usage", "abc123def456", "--json"])
    assert result.exit_code == 0, result.output
    assert orjson.loads(result.output)["usage"] == [
        {
            "key": "abc123def456",
            "day": time.strftime("%Y-%m-%d", time.gmtime()),
            "model": CHAT,
            "calls": 2,
            "prompt_tokens": 12,
            "completion_tokens": 31,
        }
    ]
    table = runner.invoke(app, ["keys", "usage", "abc123def456"])
    assert table.exit_code == 0, table.output
    assert "today: 2 calls, 43 tokens" in table.output


@pytest.mark.postgres
def test_nodes_admitting_and_settling_one_key_at_once_never_deadlock(
    migrated_postgres_uri: str,
) -> None:
    """Admissions lock a key's rows in key order; settlements must too (an ``UPDATE ... FROM``
    in the plan's order deadlocked against them)."""
    engines = [sa.create_engine(migrated_postgres_uri) for _ in range(2)]
    errors: list[BaseException] = []

    def calls(store: SharedBudgetStore) -> None:
        try:
            for _ in range(300):
                store.settle(store.admit("hot", Limits(), 300), CHAT, 40, 60)
        except BaseException as exc:  # reported below, with the thread's other failures
            errors.append(exc)

    try:
        threads = [threading.Thread(target=calls, args=(SharedBudgetStore(e),)) for e in engines]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert not any(t.is_alive() for t in threads)
        assert errors == []
        assert SharedBudgetStore(engines[0]).usage("hot")[0].requests == 600
    finally:
        for engine in engines:
            engine.dispose()
