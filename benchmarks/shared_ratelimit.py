"""Cost of a rate-limit check shared by a deployment's replicas (``SharedRateLimiter``: one
autocommit ``INSERT ... ON CONFLICT DO UPDATE ... RETURNING`` on PostgreSQL per check) next to
the in-memory default (``RateLimiter``, no I/O).

    python -m benchmarks.shared_ratelimit --postgres postgresql+psycopg://... --checks 2000

Runs in a schema of its own (created, migrated, dropped). ``--threads 2`` adds two callers on
one key (two replicas' pools contending for the same window row).

The language-model budgets' lines: a call's admission (``admit``: requests and tokens of the
minute and the day, one transaction) and its ``settle`` (the windows corrected to what was
used, the day's usage row), on the home's SQLite file (one machine) and on PostgreSQL
(``SharedBudgetStore``, a deployment's nodes).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa

from medserve.core.errors import RateLimitedError
from medserve.core.store.counters import SharedCounters
from medserve.core.store.sql import SqlRegistryStore
from medserve.features.llm.budgets import Budgets, BudgetStore, Limits, SharedBudgetStore
from medserve.features.security.ratelimit import RateLimiter, SharedRateLimiter

_LIMITS = Limits(requests_per_minute=10**9, tokens_per_minute=10**15, tokens_per_day=10**15)


def _budget_calls(store: Budgets, key: str, n: int, settle: bool) -> list[float]:
    """Per call: ``admit`` alone, or ``admit`` then ``settle`` (a call used less than it
    reserved, so the windows are corrected too)."""
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        reservation = store.admit(key, _LIMITS, 300)
        if settle:
            store.settle(reservation, "bench-model", 40, 60)
        out.append(time.perf_counter() - t0)
    return out


def _two_callers(calls: Callable[[int], list[float]]) -> list[float]:
    results: list[list[float]] = [[], []]

    def run(i: int) -> None:
        results[i] = calls(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results[0] + results[1]


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
        n = max(1, args.checks // 4)
        with tempfile.TemporaryDirectory() as tmp:
            lite = BudgetStore(Path(tmp) / "budgets.db")
            try:
                print(_summary("budget admit, SQLite", _budget_calls(lite, "b0", n, False)))
                print(_summary("budget admit+settle, SQLite", _budget_calls(lite, "b1", n, True)))
            finally:
                lite.close()
        budgets = [SharedBudgetStore(e) for e in engines]
        _budget_calls(budgets[0], "warm", 20, True)
        print(_summary("budget admit, shared", _budget_calls(budgets[0], "b2", n, False)))
        print(_summary("budget admit+settle, shared", _budget_calls(budgets[0], "b3", n, True)))
        print(
            _summary(
                "budget admit+settle, shared, 2 callers on one key",
                _two_callers(lambda i: _budget_calls(budgets[i], "b4", n, True)),
            )
        )
    finally:
        for engine in engines:
            engine.dispose()
        with admin.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        admin.dispose()


if __name__ == "__main__":
    main()
