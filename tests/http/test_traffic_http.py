"""Canary and shadow traffic through the app in process (the uvicorn backend's app): the split
holds inside a binomial interval, a patient stays on one version, every answer names the version
that gave it, shadows are logged and never returned, a failing shadow changes nothing live, and
a split of production goes through the promotion gate and the audit outbox."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from asgi_lifespan import LifespanManager
from scipy.stats import binom
from sklearn.linear_model import LogisticRegression
from tests.support import wait_for

from medserve.core.registry.service import Registry
from medserve.core.settings import Settings
from medserve.core.store.monitoring import MonitoringStore
from medserve.core.store.schema import registry_outbox
from medserve.core.store.traffic import TrafficStore
from medserve.faces.app import create_app
from medserve.features.governance.traffic import set_traffic
from medserve.serving.fast_path import HotPathApp
from medserve.serving.traffic import MAX_SHADOWS_IN_FLIGHT

T = TypeVar("T")

FEATURES = ["age", "bp", "chol"]


def _frame(seed: int = 0, columns: list[str] = FEATURES) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = pd.DataFrame(rng.normal(size=(120, 3)), columns=columns)
    return X, (X.iloc[:, 0] + 0.5 * X.iloc[:, 1] > 0).astype(int).to_numpy()


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """Versions 1 and 2 agree on most rows, 3 disagrees everywhere (trained on flipped labels),
    4 takes other features (a shadow of it cannot run on the live inputs: it fails)."""
    path = tmp_path / "home"
    registry = Registry.open(Settings(home=path))
    try:
        X, y = _frame()
        registry.register("risk", LogisticRegression().fit(X, y), sample=X, alias="production")
        registry.register("risk", LogisticRegression(C=0.5).fit(X, y), sample=X)
        registry.register("risk", LogisticRegression().fit(X, 1 - y), sample=X)
        X4, y4 = _frame(1, ["a", "b", "c"])
        registry.register("risk", LogisticRegression().fit(X4, y4), sample=X4)
    finally:
        registry.close()
    return path


@asynccontextmanager
async def serving(home: Path) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(home=home, security=False, reload_interval_s=0.05, journal=False)
    app = create_app(settings)
    async with LifespanManager(app) as manager:  # type: ignore[arg-type]
        transport = httpx.ASGITransport(app=manager.app)  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="http://medserve") as c:
            yield c


@pytest.fixture
async def client(home: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with serving(home) as c:
        yield c


async def eventually(predicate: Callable[[], T | None], what: str) -> T:
    """``wait_for`` in a thread: the app's writers need the event loop this test runs on."""
    return await asyncio.to_thread(wait_for, predicate, timeout_s=60, what=what)


def _split(home: Path, split: dict[int, int], shadows: list[int] | None = None) -> None:
    registry = Registry.open(Settings(home=home))
    try:
        set_traffic(
            registry,
            "risk",
            "production",
            split,
            shadows,
            actor="tester",
            reason="canary of v2 for a week",
            override_approver="Dr. Governance",  # the test versions have no cards
        )
    finally:
        registry.close()


ROW = {"age": 0.3, "bp": -0.2, "chol": 1.0}


async def _predict(client: httpx.AsyncClient, patient: str | None = None) -> dict[str, object]:
    headers = {"x-patient-id": patient} if patient else {}
    r = await client.post("/v1/models/risk/predict", json={"instances": [ROW]}, headers=headers)
    assert r.status_code == 200, r.text
    body: dict[str, object] = r.json()
    return body


async def _follows(client: httpx.AsyncClient, versions: set[int]) -> bool:
    seen = {(await _predict(client))["version"] for _ in range(40)}
    return seen == versions


async def _wait_split(client: httpx.AsyncClient, versions: set[int]) -> None:
    for _ in range(200):  # the server follows on its next poll (every 50 ms here)
        if await _follows(client, versions):
            return
    raise AssertionError(f"the server never served versions {versions}")


async def test_a_90_10_canary_holds_inside_a_binomial_interval(
    home: Path, client: httpx.AsyncClient
) -> None:
    assert (await _predict(client))["version"] == 1
    _split(home, {1: 90, 2: 10})
    await _wait_split(client, {1, 2})
    n = 2000
    counts = Counter([(await _predict(client))["version"] for _ in range(n)])
    low, high = binom.interval(0.999, n, 0.10)
    assert set(counts) == {1, 2}
    assert low <= counts[2] <= high, counts
    # the prediction log names the version that answered, so monitoring follows it
    store = Registry.open(Settings(home=home))
    try:
        monitoring = MonitoringStore(store.store)
        logged = await eventually(
            lambda: monitoring.count_predictions("risk") >= n + 41 and monitoring,
            "the prediction log",
        )
        by_version = Counter(
            p.version
            for p in logged.predictions(
                "risk", pd.Timestamp("2000-01-01", tz="UTC"), pd.Timestamp.now(tz="UTC")
            )
        )
        assert by_version[2] >= counts[2]
    finally:
        store.close()


async def test_a_patient_stays_on_one_version(home: Path, client: httpx.AsyncClient) -> None:
    _split(home, {1: 50, 2: 50})
    await _wait_split(client, {1, 2})
    for patient in ("patient-a", "patient-b", "patient-c", "patient-d"):
        answers = {(await _predict(client, patient))["version"] for _ in range(15)}
        assert len(answers) == 1
    spread = {(await _predict(client, f"p-{i}"))["version"] for i in range(40)}
    assert spread == {1, 2}


async def test_shadows_are_logged_never_returned_and_a_failing_one_changes_nothing(
    home: Path,
) -> None:
    _split(home, {1: 100}, shadows=[3, 4])
    registry = Registry.open(Settings(home=home))
    try:
        async with serving(home) as client:
            traffic = TrafficStore(registry.store)
            answers = [await _predict(client) for _ in range(30)]
            assert {a["version"] for a in answers} == {1}  # only the live version answers
            assert all(set(a) == set(answers[0]) for a in answers)
            rows = await eventually(
                lambda: (r := traffic.shadow_results("risk")) and len(r) >= 60 and r,
                "the shadow results",
            )
            by_version = {3: [r for r in rows if r["shadow_version"] == 3]}
            by_version[4] = [r for r in rows if r["shadow_version"] == 4]
            assert len(by_version[3]) >= 30
            assert len(by_version[4]) >= 30
            assert not any(r["failed"] for r in by_version[3])
            assert all(r["agree"] == 0.0 for r in by_version[3])  # v3 disagrees on every row
            assert all(r["failed"] and "inputs differ" in r["error"] for r in by_version[4])
            assert all(r["live_version"] == 1 for r in rows)
            monitoring = MonitoringStore(registry.store)
            await eventually(
                lambda: monitoring.count_predictions("risk") >= 30, "the prediction log"
            )
            compared = (await client.get("/v1/models/risk/compare")).json()
            shadows = {s["version"]: s for s in compared["shadows"]}
            assert shadows[3]["agreement"] == 0.0
            assert shadows[3]["failed"] == 0
            assert shadows[4]["failed"] == shadows[4]["requests"]
            assert compared["traffic"]["shadow"] == [3, 4]
            assert compared["versions"][0]["version"] == 1
    finally:
        registry.close()


async def test_a_split_of_production_goes_through_the_gate_and_the_audit(
    home: Path, client: httpx.AsyncClient
) -> None:
    refused = await client.put(
        "/v1/models/risk/traffic/production", json={"split": {"1": 90, "2": 10}}
    )
    assert refused.status_code == 409
    assert refused.json()["code"] == "promotion_blocked"
    assert any("v2:" in d["message"] for d in refused.json()["details"])
    bad = await client.put("/v1/models/risk/traffic/production", json={"split": {"1": 90}})
    assert bad.status_code == 400
    assert "add up to 100" in bad.json()["error"]
    done = await client.put(
        "/v1/models/risk/traffic/production",
        json={
            "split": {"1": 80, "2": 20},
            "reason": "two-week canary",
            "override_approver": "Dr. Governance",
        },
    )
    assert done.status_code == 200, done.text
    assert done.json()["split"] == {"1": 80, "2": 20}
    assert done.json()["gate"].startswith("OVERRIDE by Dr. Governance")
    assert (await client.get("/v1/models/risk/traffic/production")).json()["split"] == {
        "1": 80,
        "2": 20,
    }
    registry = Registry.open(Settings(home=home))
    try:
        with registry.store.engine.connect() as conn:  # type: ignore[attr-defined]
            kinds = conn.execute(sa.select(registry_outbox.c.kind, registry_outbox.c.reason)).all()
        audited = [reason for kind, reason in kinds if kind == "registry.traffic_set"]
        assert audited
        assert "v2: 20%" in audited[-1]
        assert "OVERRIDE" in audited[-1]
    finally:
        registry.close()
    # moving production to the canary's version makes it the alias's own version
    _split(home, {2: 100})
    await _wait_split(client, {2})


async def test_outcomes_follow_the_version_that_answered(
    home: Path, client: httpx.AsyncClient
) -> None:
    _split(home, {1: 50, 2: 50})
    await _wait_split(client, {1, 2})
    answered = [await _predict(client) for _ in range(40)]
    registry = Registry.open(Settings(home=home))
    try:
        monitoring = MonitoringStore(registry.store)
        wanted = {f"{a['request_id']}-0" for a in answered}
        await eventually(
            lambda: wanted <= set(monitoring.prediction_ids("risk")), "the prediction log"
        )
    finally:
        registry.close()
    # v1's answers turn out right, v2's wrong: performance must follow the version
    outcomes = []
    for a in answered:
        label = a["predictions"][0]["label"]  # type: ignore[index]
        truth = label if a["version"] == 1 else 1 - label
        outcomes.append({"prediction_id": f"{a['request_id']}-0", "outcome": truth})
    posted = await client.post("/v1/outcomes", json={"outcomes": outcomes})
    assert posted.status_code == 200, posted.text
    compared = (await client.get("/v1/models/risk/compare")).json()
    by_version = {v["version"]: v for v in compared["versions"]}
    assert by_version[1]["labelled"] == sum(a["version"] == 1 for a in answered)
    assert by_version[1]["performance"] == 1.0
    assert by_version[2]["performance"] == 0.0
    assert compared["traffic"]["split"] == {"1": 50, "2": 50}


def _plane(app: Any) -> Any:
    """The data plane of a running app (below the extensions' middleware)."""
    while not isinstance(app, HotPathApp):
        app = app.app
    return app.resources.plane


async def test_a_failing_shadow_stores_its_error_kind_never_its_message(home: Path) -> None:
    """A runtime's error message may quote an input value: only the exception's kind is kept."""
    _split(home, {1: 100}, shadows=[2])

    def leaky(X: np.ndarray) -> dict[str, np.ndarray]:
        raise ValueError("could not convert string to float: 'MRN-0042-SECRET'")

    settings = Settings(home=home, security=False, reload_interval_s=0.05, journal=False)
    app = create_app(settings)
    registry = Registry.open(Settings(home=home))
    try:
        async with LifespanManager(app) as manager:  # type: ignore[arg-type]
            transport = httpx.ASGITransport(app=manager.app)  # type: ignore[arg-type]
            route = _plane(app).manager.routes[("risk", "production")]
            route.models[0].shadows[0].predict = leaky  # type: ignore[method-assign]
            async with httpx.AsyncClient(transport=transport, base_url="http://medserve") as c:
                answers = [await _predict(c) for _ in range(5)]
            assert {a["version"] for a in answers} == {1}
            traffic = TrafficStore(registry.store)
            rows = await eventually(
                lambda: (r := traffic.shadow_results("risk")) and len(r) >= 5 and r,
                "the shadow results",
            )
        assert all(r["failed"] and r["error"] == "ValueError" for r in rows)
        assert "SECRET" not in str(rows)
    finally:
        registry.close()


async def test_a_stuck_shadow_never_delays_the_live_answers(home: Path) -> None:
    """Shadows stuck in their model: live answers keep coming, the event loop's own thread
    pool stays free for the live path (model loads, credential checks use it), and the copies
    beyond the in-flight bound are dropped and counted, not queued."""
    _split(home, {1: 100}, shadows=[2])
    release, calls = threading.Event(), Counter[str]()

    def stuck(X: np.ndarray) -> dict[str, np.ndarray]:
        calls["shadow"] += 1
        release.wait(60)
        return {"label": np.zeros(X.shape[0], dtype=np.int64)}

    settings = Settings(home=home, security=False, reload_interval_s=0.05, journal=False)
    app = create_app(settings)
    async with LifespanManager(app) as manager:  # type: ignore[arg-type]
        transport = httpx.ASGITransport(app=manager.app)  # type: ignore[arg-type]
        plane = _plane(app)
        route = plane.manager.routes[("risk", "production")]
        route.models[0].shadows[0].predict = stuck  # type: ignore[method-assign]
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://medserve") as c:
                answers = [await _predict(c) for _ in range(MAX_SHADOWS_IN_FLIGHT + 20)]
                assert {a["version"] for a in answers} == {1}
                assert calls["shadow"] >= 1  # the shadows started, and are stuck
                # the default executor is free: a live to_thread completes (bounded wait)
                assert await asyncio.wait_for(asyncio.to_thread(lambda: "free"), 30) == "free"
                shadow_log = plane.manager.shadow_log
                assert shadow_log is not None
                assert shadow_log.dropped >= 20  # beyond the bound: dropped, counted
        finally:
            release.set()
