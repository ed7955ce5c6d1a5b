"""Aliases: set, move, delete, the full history of every move, and what servers read."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest

from medserve.core.errors import (
    AliasNotFoundError,
    InvalidRequestError,
    ModelNotFoundError,
    VersionNotFoundError,
)
from medserve.core.registry.entities import ModelVersion
from medserve.core.store.sql import SqlRegistryStore

AddVersion = Callable[..., ModelVersion]


@pytest.fixture
def model(store: SqlRegistryStore, add_version: AddVersion) -> str:
    store.create_model("m")
    for _ in range(3):
        add_version("m")
    return "m"


def test_set_move_and_delete_alias_with_history(store: SqlRegistryStore, model: str) -> None:
    first = store.set_alias(model, "production", 1, actor="ana", reason="approved by board")
    assert store.get_alias(model, "production") == 1
    moved = store.set_alias(model, "production", 3, actor="ben", reason="better AUROC")
    assert store.get_alias(model, "production") == 3
    deleted = store.delete_alias(model, "production", actor="cy", reason="incident 42")
    with pytest.raises(AliasNotFoundError):
        store.get_alias(model, "production")

    history = store.alias_history(model, "production")
    assert history == [first, moved, deleted]
    who_from_to_why = [(e.actor, e.from_version, e.to_version, e.reason) for e in history]
    assert who_from_to_why == [
        ("ana", None, 1, "approved by board"),
        ("ben", 1, 3, "better AUROC"),
        ("cy", 3, None, "incident 42"),
    ]
    assert all(e.model_name == model and e.alias == "production" for e in history)
    assert all(e.at.utcoffset() == timedelta(0) for e in history)
    assert [e.at for e in history] == sorted(e.at for e in history)
    assert len({e.id for e in history}) == 3


def test_history_of_all_aliases_is_in_order(store: SqlRegistryStore, model: str) -> None:
    store.set_alias(model, "staging", 2, actor="ana")
    store.set_alias(model, "production", 1, actor="ana")
    store.set_alias(model, "staging", 3, actor="ben")
    store.set_alias(model, "production", 2, actor="ben")

    everything = store.alias_history(model)
    assert [(e.alias, e.from_version, e.to_version) for e in everything] == [
        ("staging", None, 2),
        ("production", None, 1),
        ("staging", 2, 3),
        ("production", 1, 2),
    ]
    staging = store.alias_history(model, "staging")
    assert [(e.from_version, e.to_version) for e in staging] == [(None, 2), (2, 3)]
    assert store.alias_history(model, "never-set") == []


def test_setting_alias_to_same_version_is_recorded(store: SqlRegistryStore, model: str) -> None:
    store.set_alias(model, "production", 2, actor="ana")
    again = store.set_alias(model, "production", 2, actor="ben", reason="re-approved")
    assert (again.from_version, again.to_version, again.actor) == (2, 2, "ben")
    assert len(store.alias_history(model, "production")) == 2


def test_alias_to_missing_version_is_refused(store: SqlRegistryStore, model: str) -> None:
    with pytest.raises(VersionNotFoundError):
        store.set_alias(model, "production", 4, actor="ana")
    assert store.list_aliases(model) == {}
    assert store.alias_history(model) == []


def test_alias_on_missing_model_is_refused(store: SqlRegistryStore) -> None:
    with pytest.raises(ModelNotFoundError):
        store.set_alias("ghost", "production", 1, actor="ana")
    with pytest.raises(ModelNotFoundError):
        store.delete_alias("ghost", "production", actor="ana")
    with pytest.raises(ModelNotFoundError):
        store.get_alias("ghost", "production")
    with pytest.raises(ModelNotFoundError):
        store.list_aliases("ghost")
    with pytest.raises(ModelNotFoundError):
        store.alias_history("ghost")


@pytest.mark.parametrize(
    "alias", ["1", "42", "007", "", "Production", "-x", "_x", "9lives", "has space", "a" * 65]
)
def test_invalid_aliases_are_refused(store: SqlRegistryStore, model: str, alias: str) -> None:
    with pytest.raises(InvalidRequestError):
        store.set_alias(model, alias, 1, actor="ana")
    assert store.list_aliases(model) == {}
    assert store.alias_history(model) == []


@pytest.mark.parametrize("alias", ["production", "staging", "champion-2", "a_b", "v1", "a" * 64])
def test_valid_aliases_are_accepted(store: SqlRegistryStore, model: str, alias: str) -> None:
    store.set_alias(model, alias, 2, actor="ana")
    assert store.get_alias(model, alias) == 2


def test_delete_unset_alias(store: SqlRegistryStore, model: str) -> None:
    with pytest.raises(AliasNotFoundError):
        store.delete_alias(model, "production", actor="ana")
    assert store.alias_history(model) == []


def test_list_aliases(store: SqlRegistryStore, model: str) -> None:
    assert store.list_aliases(model) == {}
    store.set_alias(model, "staging", 3, actor="ana")
    store.set_alias(model, "production", 2, actor="ana")
    assert store.list_aliases(model) == {"production": 2, "staging": 3}


def test_all_aliases_spans_models(
    store: SqlRegistryStore, model: str, add_version: AddVersion
) -> None:
    store.create_model("a-first")
    add_version("a-first")
    store.create_model("no-aliases")
    add_version("no-aliases")
    assert store.all_aliases() == []

    store.set_alias(model, "staging", 3, actor="ana")
    store.set_alias(model, "production", 2, actor="ana")
    store.set_alias("a-first", "production", 1, actor="ana")

    assert store.all_aliases() == [
        ("a-first", "production", 1),
        ("m", "production", 2),
        ("m", "staging", 3),
    ]
    store.delete_alias(model, "staging", actor="ana")
    assert ("m", "staging", 3) not in store.all_aliases()


def test_aliases_of_one_model_do_not_leak_into_another(
    store: SqlRegistryStore, model: str, add_version: AddVersion
) -> None:
    store.create_model("other")
    add_version("other")
    store.set_alias(model, "production", 3, actor="ana")
    with pytest.raises(AliasNotFoundError):
        store.get_alias("other", "production")
    assert store.alias_history("other") == []
