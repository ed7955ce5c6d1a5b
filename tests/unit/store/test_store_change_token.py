"""change_token: every kind of write changes it (as seen by other processes too); reads never do."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from medserve.core.errors import AlreadyExistsError, VersionNotFoundError
from medserve.core.registry.entities import ModelVersion
from medserve.core.store.governance import GovernanceStore
from medserve.core.store.sql import SqlRegistryStore

AddVersion = Callable[..., ModelVersion]


def test_every_write_changes_the_token(
    store: SqlRegistryStore, second_store: SqlRegistryStore, add_version: AddVersion
) -> None:
    writes: list[tuple[str, Callable[[], object]]] = [
        ("create_model", lambda: store.create_model("m")),
        ("update_model", lambda: store.update_model("m", description="d")),
        ("create_version", lambda: add_version("m")),
        ("create_version again", lambda: add_version("m")),
        ("update_version", lambda: store.update_version("m", 1, tags={"t": "1"})),
        ("set_alias", lambda: store.set_alias("m", "production", 1, actor="ana")),
        ("move_alias", lambda: store.set_alias("m", "production", 2, actor="ana")),
        ("delete_alias", lambda: store.delete_alias("m", "production", actor="ana")),
        ("delete_model", lambda: store.delete_model("m")),
    ]
    seen = {store.change_token()}
    for what, write in writes:
        before = store.change_token()
        write()
        after = store.change_token()
        assert after != before, what
        # Another process polling the same database sees the same change.
        assert second_store.change_token() == after, what
        assert after not in seen, what
        seen.add(after)


def test_reads_do_not_change_the_token(store: SqlRegistryStore, add_version: AddVersion) -> None:
    store.create_model("m")
    add_version("m")
    store.set_alias("m", "production", 1, actor="ana")
    token = store.change_token()

    store.get_model("m")
    store.list_models(name_contains="m")
    store.get_version("m", 1)
    store.list_versions("m")
    store.get_alias("m", "production")
    store.list_aliases("m")
    store.alias_history("m")
    store.all_aliases()
    store.resolve("m", "production")
    store.change_token()

    assert store.change_token() == token


def test_failed_writes_do_not_change_the_token(
    store: SqlRegistryStore, add_version: AddVersion
) -> None:
    store.create_model("m")
    add_version("m")
    token = store.change_token()
    with pytest.raises(AlreadyExistsError):
        store.create_model("m")
    with pytest.raises(VersionNotFoundError):
        store.set_alias("m", "production", 9, actor="ana")
    assert store.change_token() == token


def test_token_is_a_string(store: SqlRegistryStore) -> None:
    assert isinstance(store.change_token(), str)


def test_governance_records_do_not_change_the_token(
    store: SqlRegistryStore, add_version: AddVersion
) -> None:
    """Cards, criteria, evaluations and training runs do not change what is served: servers
    must not reload for them (they did while governance borrowed the registry's transaction)."""
    store.create_model("m")
    add_version("m")
    gov = GovernanceStore(store)
    before = store.change_token()
    gov.save_card("m", 1, {"intended_use": "triage"}, actor="ana")
    gov.save_training_run("m", 1, {"threshold": {"value": 0.4}}, spec_text="task: binary")
    assert gov.card("m", 1)["intended_use"] == "triage"
    assert store.change_token() == before
    store.set_alias("m", "production", 1, actor="ana")
    assert store.change_token() != before
