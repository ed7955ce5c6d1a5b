"""Several writers on one database, as server processes are: numbers stay unique and gapless.

SQLite relies on ``BEGIN IMMEDIATE`` plus a busy timeout, PostgreSQL on the per-model counter
row lock; these tests make the writers overlap on purpose (a barrier for threads, a start file
for processes) so that a race, if there were one, would show up as a duplicate or an error.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from pathlib import Path

from medserve.core.registry.entities import ModelVersion
from medserve.core.store.sql import SqlRegistryStore

AddVersion = Callable[..., ModelVersion]


def _run_threads(targets: list[Callable[[], None]]) -> None:
    errors: list[BaseException] = []

    def guard(target: Callable[[], None]) -> None:
        try:
            target()
        except BaseException as exc:  # collected and re-raised in the test thread
            errors.append(exc)

    threads = [threading.Thread(target=guard, args=(t,)) for t in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a writer hung"
    if errors:
        raise errors[0]


def test_two_stores_in_threads_get_distinct_consecutive_versions(
    store: SqlRegistryStore, second_store: SqlRegistryStore, add_version: AddVersion
) -> None:
    store.create_model("m")
    per_writer = 15
    writers = [store, second_store, store, second_store]
    barrier = threading.Barrier(len(writers))
    numbers: list[int] = []
    lock = threading.Lock()

    def writer(target: SqlRegistryStore) -> Callable[[], None]:
        def run() -> None:
            barrier.wait(timeout=60)
            for _ in range(per_writer):
                number = add_version("m", target).version
                with lock:
                    numbers.append(number)

        return run

    _run_threads([writer(w) for w in writers])

    expected = list(range(1, per_writer * len(writers) + 1))
    assert sorted(numbers) == expected
    stored = [v.version for v in store.list_versions("m", page_size=1000).items]
    assert stored == expected[::-1]


def test_concurrent_alias_moves_keep_a_consistent_history(
    store: SqlRegistryStore, second_store: SqlRegistryStore, add_version: AddVersion
) -> None:
    store.create_model("m")
    for _ in range(4):
        add_version("m")
    rounds = 10
    barrier = threading.Barrier(2)

    def mover(target: SqlRegistryStore, versions: tuple[int, int]) -> Callable[[], None]:
        def run() -> None:
            barrier.wait(timeout=60)
            for i in range(rounds):
                target.set_alias("m", "production", versions[i % 2], actor="bot")

        return run

    _run_threads([mover(store, (1, 2)), mover(second_store, (3, 4))])

    history = store.alias_history("m", "production")
    assert len(history) == 2 * rounds
    assert history[0].from_version is None
    # Each move starts where the previous one ended: no lost update between writers.
    for previous, event in itertools.pairwise(history):
        assert event.from_version == previous.to_version
    assert store.get_alias("m", "production") == history[-1].to_version


WRITER = textwrap.dedent(
    """
    import json, os, sys
    from medserve.core.store.sql import SqlRegistryStore

    uri, count = sys.argv[1], int(sys.argv[2])
    store = SqlRegistryStore(uri)
    print("ready", flush=True)  # opened (and migrated): the parent says go on stdin
    assert sys.stdin.readline() == "go\\n"
    numbers = [
        store.create_version(
            "m", artifact_sha256="ab" * 32, artifact_filename="m.onnx", flavor="onnx",
            runtime="onnx", created_by=f"pid-{os.getpid()}",
        ).version
        for _ in range(count)
    ]
    store.close()
    print(json.dumps(numbers))
    """
)


def test_separate_processes_get_distinct_consecutive_versions(
    store_uri: str, store: SqlRegistryStore
) -> None:
    store.create_model("m")
    processes, per_process = 3, 20
    children = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, store_uri, str(per_process)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONWARNINGS": "error"},
        )
        for _ in range(processes)
    ]
    # Every child has opened (and migrated) its own store before any of them writes. Nothing
    # else is on a child's stdout before "go", so readline() leaves no buffered output behind.
    for child in children:
        assert child.stdout is not None
        assert child.stdout.readline() == "ready\n", child.communicate(timeout=60)
    for child in children:
        assert child.stdin is not None
        child.stdin.write("go\n")
        child.stdin.flush()
    numbers: list[int] = []
    for child in children:
        out, err = child.communicate(timeout=240)
        assert child.returncode == 0, err
        numbers.extend(json.loads(out))

    expected = list(range(1, processes * per_process + 1))
    assert sorted(numbers) == expected
    versions = store.list_versions("m", page_size=1000).items
    assert [v.version for v in versions] == expected[::-1]
    assert len({v.created_by for v in versions}) == processes


def test_concurrent_first_open_migrates_once(tmp_path: Path) -> None:
    """Several workers starting together on a fresh SQLite file all succeed."""
    uri = f"sqlite:///{tmp_path / 'fresh.db'}"
    opened: list[SqlRegistryStore] = []
    lock = threading.Lock()
    barrier = threading.Barrier(4)

    def opener() -> None:
        barrier.wait(timeout=60)
        store = SqlRegistryStore(uri)
        with lock:
            opened.append(store)

    try:
        _run_threads([opener] * 4)
        opened[0].create_model("m")
        assert all(s.get_model("m").name == "m" for s in opened)
    finally:
        for s in opened:
            s.close()
