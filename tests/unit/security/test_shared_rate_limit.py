"""Rate limits shared by a deployment's replicas (the Ray backend): two limiters on two
connection pools, as two replicas would hold, admit exactly the credential's limit per window
together, on PostgreSQL; the per-process default stays in memory."""

from __future__ import annotations

import hashlib
import threading
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from medserve.core.errors import RateLimitedError
from medserve.core.settings import Settings
from medserve.core.store.counters import SharedCounters
from medserve.core.store.sql import SqlRegistryStore
from medserve.features.security.keys import SecurityStore
from medserve.features.security.ratelimit import (
    RATE_SCOPE,
    RateLimiter,
    SharedRateLimiter,
    rate_window,
)
from medserve.serving.extensions.security import build_guard


def _count(limiter: SharedRateLimiter, key: str, rate: float, tries: int, out: list[bool]) -> None:
    """``out``: per try, whether it was admitted; a refusal's Retry-After must lie inside the
    window (else it is recorded as an admission, which the exact count then catches)."""
    for _ in range(tries):
        try:
            limiter.check(key, rate)
            out.append(True)
        except RateLimitedError as refused:
            out.append(not 0 < refused.retry_after_s <= limiter.window_s)


@pytest.mark.postgres
def test_two_replicas_admit_exactly_the_limit_per_window(migrated_postgres_uri: str) -> None:
    engines = [sa.create_engine(migrated_postgres_uri) for _ in range(2)]  # two replicas' pools
    try:
        limiters = [
            SharedRateLimiter(SharedCounters(e), RateLimiter(2), window_s=3600.0) for e in engines
        ]
        rate = 0.01  # 36 requests per hour-long window: the whole run falls in one or two
        window_s, limit = rate_window(rate, 3600.0)
        assert (window_s, limit) == (3600.0, 36)
        key = f"key-{uuid.uuid4().hex[:8]}"
        results: list[list[bool]] = [[], []]
        threads = [
            threading.Thread(target=_count, args=(limiters[i], key, rate, 40, results[i]))
            for i in range(2)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert not any(t.is_alive() for t in threads)
        assert sum(map(len, results)) == 80
        admitted = sum(sum(r) for r in results)
        with engines[0].connect() as conn:
            totals = [
                int(t)
                for t in conn.execute(
                    sa.text(
                        "SELECT total FROM cluster_counters WHERE scope = :s AND counter_key = :k "
                        "ORDER BY window_ms"
                    ),
                    {"s": RATE_SCOPE, "k": hashlib.sha256(key.encode()).hexdigest()[:40]},
                ).scalars()
            ]
        # no increment lost between the replicas; the stored key is a digest, not the key
        assert sum(totals) == 80
        # exactly the limit in each window the run touched (almost always one)
        assert admitted == sum(min(t, limit) for t in totals)
        if len(totals) == 1:
            assert admitted == limit
    finally:
        for engine in engines:
            engine.dispose()


@pytest.mark.postgres
def test_a_credential_over_its_rate_waits_for_the_next_window(migrated_postgres_uri: str) -> None:
    engine = sa.create_engine(migrated_postgres_uri)
    try:
        counters = SharedCounters(engine)
        key = f"key-{uuid.uuid4().hex[:8]}"
        totals = [counters.add(RATE_SCOPE, key, 3600.0)[0] for _ in range(3)]
        assert totals in ([1, 2, 3], [1, 1, 2], [1, 2, 1])  # (a window's edge restarts it)
        other = counters.add(RATE_SCOPE, f"{key}-other", 3600.0)
        assert other[0] == 1  # keys are counted apart
        assert 0 < other[1] <= 3600.0
    finally:
        engine.dispose()


def test_an_unreachable_database_falls_back_to_the_replicas_share(tmp_path: Path) -> None:
    engine = sa.create_engine(
        "postgresql+psycopg://nobody:nothing@127.0.0.1:1/none", connect_args={"connect_timeout": 2}
    )
    limiter = SharedRateLimiter(SharedCounters(engine), RateLimiter(workers=2))
    limiter.check("k", 2.0)  # the replica's share: 1 request/s, a burst of 1
    with pytest.raises(RateLimitedError):
        limiter.check("k", 2.0)
    engine.dispose()


@pytest.mark.postgres
def test_the_default_stays_in_memory_and_ray_replicas_share(
    migrated_postgres_uri: str, tmp_path: Path
) -> None:
    pg = sa.create_engine(migrated_postgres_uri)
    SqlRegistryStore(f"sqlite:///{tmp_path / 'r.db'}").close()  # migrates
    lite = sa.create_engine(f"sqlite:///{tmp_path / 'r.db'}")
    try:
        default = build_guard(Settings(home=tmp_path), SecurityStore(pg))
        assert default.shared_limiter is None  # uvicorn: no database call per request
        shared = Settings(home=tmp_path, shared_rate_limits=True)
        assert build_guard(shared, SecurityStore(pg)).shared_limiter is not None
        assert build_guard(shared, SecurityStore(lite)).shared_limiter is None  # one machine
    finally:
        pg.dispose()
        lite.dispose()
