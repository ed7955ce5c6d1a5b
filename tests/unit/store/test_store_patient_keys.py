"""Patient keys on SQLite and PostgreSQL: a reference is stable for the life of its key, is
created in bulk, differs after the key is destroyed, and two writers racing on a new patient
agree on one key."""

from __future__ import annotations

import re
import threading
from concurrent.futures import ThreadPoolExecutor

import sqlalchemy as sa

from medserve.core.patients import PatientKeys
from medserve.core.phi import pseudonymize
from medserve.core.store.sql import SqlRegistryStore
from medserve.core.store.tables_privacy import patient_keys

SALT = b"k" * 32
P = pseudonymize("MRN-1", salt=SALT)


def _refs(store: SqlRegistryStore, pseudonyms: set[str]) -> dict[str, str]:
    with store.uow.write() as conn:
        return PatientKeys().refs(conn, pseudonyms)


def _count(store: SqlRegistryStore) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(patient_keys)).scalar_one())


def test_a_reference_is_stable_while_its_key_lives(store: SqlRegistryStore) -> None:
    first = _refs(store, {P})
    assert set(first) == {P}
    assert re.fullmatch(r"pat_[0-9a-f]{32}", first[P])
    assert P.removeprefix("pid_") not in first[P]
    assert _refs(store, {P}) == first  # another transaction, same key
    assert _count(store) == 1


def test_references_are_made_in_bulk(store: SqlRegistryStore) -> None:
    many = {pseudonymize(f"MRN-{i}", salt=SALT) for i in range(2, 1002)}  # past one IN chunk
    known = _refs(store, {P})
    refs = _refs(store, many | {P})
    assert set(refs) == many | {P}
    assert refs[P] == known[P]  # an existing key is reused, the missing ones are created
    assert len(set(refs.values())) == len(refs)
    assert _count(store) == len(many) + 1
    assert _refs(store, many) == {p: refs[p] for p in many}
    assert _refs(store, set()) == {}


def test_forgetting_the_key_unlinks_the_reference(store: SqlRegistryStore) -> None:
    before = _refs(store, {P})
    other = pseudonymize("MRN-2", salt=SALT)
    kept = _refs(store, {other})
    with store.uow.write() as conn:
        assert PatientKeys().forget(conn, P) is True
        assert PatientKeys().forget(conn, P) is False
    after = _refs(store, {P})  # a patient seen again gets a new key
    assert after[P] != before[P]
    assert _refs(store, {other}) == kept


def test_two_writers_racing_on_a_new_patient_agree(
    store: SqlRegistryStore, second_store: SqlRegistryStore
) -> None:
    inside = threading.Event()
    release = threading.Event()

    def first() -> str:
        with store.uow.write() as conn:
            ref = PatientKeys().refs(conn, {P})[P]
            inside.set()
            assert release.wait(30)
        return ref

    def second() -> str:
        assert inside.wait(30)
        with second_store.uow.write() as conn:  # waits for the first writer (either backend)
            return PatientKeys().refs(conn, {P})[P]

    with ThreadPoolExecutor(2) as pool:
        a = pool.submit(first)
        b = pool.submit(second)
        release.set()
        assert a.result(timeout=60) == b.result(timeout=60)
    assert _count(store) == 1
