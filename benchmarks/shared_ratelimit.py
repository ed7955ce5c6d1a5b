"""Cost of a rate-limit check shared by a deployment's replicas (``SharedRateLimiter``: one
autocommit ``INSERT ... ON CONFLICT DO UPDATE ... RETURNING`` on PostgreSQL per check) next to
the in-memory default (``RateLimiter``, no I/O).

    python -m benchmarks.shared_ratelimit --postgres postgresql+psycopg://... --checks 2000

Runs in a schema of its own (created, migrated, dropped). ``--threads 2`` adds two callers on
one key (two replicas' pools contending for the same window row).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import threading
import time
import uuid

import sqlalchemy as sa

from medserve.core.errors import RateLimitedError
from medserve.core.store.counters import SharedCounters
from medserve.core.store.sql import SqlRegistryStore
from medserve.features.security.ratelimit import RateLimiter, SharedRateLimiter


def _timed(check: object, key: str, n: int) -> list[float]:
    assert callable(check)
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        with contextlib.suppress(RateLimitedError):
            check(key, 1e9)
        out.append(time.perf_counter() - t0)
    return out


def _summary(name: str, latencies: list[float]) -> str:
    ordered = sorted(latencies)
    p99 = ordered[int(len(ordered) * 0.99) - 1]
    return (
        f"{name}: median {statistics.median(ordered) * 1e6:,.1f} µs, "
        f"p99 {p99 * 1e6:,.1f} µs, {len(ordered) / sum(ordered):,.0f} checks/s per caller"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--postgres", required=True)
    parser.add_argument("--checks", type=int, default=2000)
    args = parser.parse_args()
    schema = f"bench_rl_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(args.postgres)
    url = sa.engine.make_url(args.postgres).update_query_dict(
        {"options": f"-csearch_path={schema}"}
    )
    uri = url.render_as_string(hide_password=False)
    with admin.begin() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    engines: list[sa.Engine] = []
    try:
        SqlRegistryStore(uri).close()
        engines = [sa.create_engine(uri) for _ in range(2)]
        local = RateLimiter(1)
        shared = [SharedRateLimiter(SharedCounters(e), RateLimiter(2)) for e in engines]
        _timed(shared[0].check, "warm", 50)
        print(_summary("in-memory (default)", _timed(local.check, "k", args.checks)))
        print(_summary("shared, 1 caller", _timed(shared[0].check, "k1", args.checks)))
        results: list[list[float]] = [[], []]

        def run(i: int) -> None:
            results[i] = _timed(shared[i].check, "k2", args.checks)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        print(_summary("shared, 2 callers on one key", results[0] + results[1]))
    finally:
        for engine in engines:
            engine.dispose()
        with admin.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        admin.dispose()


if __name__ == "__main__":
    main()
