"""The workers of a server open the budget file at the same moment. Switching it to WAL and
creating its tables take locks that SQLite's busy handler does not wait for, and a worker failed
to start with "database is locked" (uvicorn then stops the whole server); the opening is
serialised by a lock file."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

from medserve.features.llm.budgets import BudgetStore


def _open(path: str, barrier: object, errors: object) -> None:
    barrier.wait()  # type: ignore[attr-defined]
    try:
        BudgetStore(Path(path))
    except Exception as exc:  # reported to the parent, which fails the test
        errors.put(f"{type(exc).__name__}: {exc}")  # type: ignore[attr-defined]


def test_workers_opening_the_budget_file_at_once_all_start(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")
    errors = context.Queue()
    for attempt in range(5):
        path = str(tmp_path / f"budgets-{attempt}.db")
        barrier = context.Barrier(6)
        processes = [context.Process(target=_open, args=(path, barrier, errors)) for _ in range(6)]
        for process in processes:
            process.start()
        for process in processes:
            process.join(timeout=120)
            assert process.exitcode == 0
    found = []
    while not errors.empty():
        found.append(errors.get())
    assert found == []
