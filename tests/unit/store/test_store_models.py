"""Registered models: create, read, list with paging and search, update, delete."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC

import pytest

from medserve.core.errors import (
    AlreadyExistsError,
    InvalidRequestError,
    ModelNotFoundError,
    VersionNotFoundError,
)
from medserve.core.registry.entities import ModelVersion
from medserve.core.store.sql import SqlRegistryStore


def test_create_and_get_model(store: SqlRegistryStore) -> None:
    created = store.create_model(
        "sepsis-risk", description="early warning", tags={"team": "icu"}, created_by="ana"
    )
    fetched = store.get_model("sepsis-risk")

    assert fetched == created
    assert fetched.name == "sepsis-risk"
    assert fetched.description == "early warning"
    assert fetched.tags == {"team": "icu"}
    assert fetched.created_by == "ana"
    assert fetched.created_at.tzinfo is not None
    assert fetched.created_at.utcoffset() == UTC.utcoffset(None)
    assert fetched.updated_at == fetched.created_at


def test_create_model_defaults(store: SqlRegistryStore) -> None:
    model = store.create_model("m1")
    assert (model.description, model.tags, model.created_by) == ("", {}, "unknown")


def test_duplicate_model_is_refused(store: SqlRegistryStore) -> None:
    store.create_model("dup")
    with pytest.raises(AlreadyExistsError):
        store.create_model("dup", description="again")
    assert store.get_model("dup").description == ""


@pytest.mark.parametrize(
    "name",
    ["", "-leading-dash", ".hidden", "has space", "slash/name", "x" * 129, "ünïcode", "a;drop"],
)
def test_invalid_model_names_are_refused(store: SqlRegistryStore, name: str) -> None:
    with pytest.raises(InvalidRequestError):
        store.create_model(name)
    assert store.list_models().items == []


@pytest.mark.parametrize("name", ["a", "9lives", "Model_v2.1-final", "x" * 128])
def test_valid_model_names_are_accepted(store: SqlRegistryStore, name: str) -> None:
    assert store.create_model(name).name == name
    assert store.get_model(name).name == name


def test_get_missing_model(store: SqlRegistryStore) -> None:
    with pytest.raises(ModelNotFoundError):
        store.get_model("nope")


def test_list_models_is_ordered_by_name(store: SqlRegistryStore) -> None:
    for name in ["charlie", "alpha", "bravo"]:
        store.create_model(name)
    page = store.list_models()
    assert [m.name for m in page.items] == ["alpha", "bravo", "charlie"]
    assert page.next_page_token is None


def test_list_models_pages_through_everything_once(store: SqlRegistryStore) -> None:
    names = [f"model-{i:02d}" for i in range(7)]
    for name in reversed(names):
        store.create_model(name)

    seen: list[str] = []
    token: str | None = None
    pages = 0
    while True:
        page = store.list_models(page_size=3, page_token=token)
        assert len(page.items) <= 3
        seen.extend(m.name for m in page.items)
        pages += 1
        token = page.next_page_token
        if token is None:
            break
    assert seen == names
    assert pages == 3


def test_exact_page_has_no_next_token(store: SqlRegistryStore) -> None:
    for name in ["a1", "a2"]:
        store.create_model(name)
    page = store.list_models(page_size=2)
    assert len(page.items) == 2
    assert page.next_page_token is None


def test_page_token_is_opaque(store: SqlRegistryStore) -> None:
    for name in ["readmission", "sepsis"]:
        store.create_model(name)
    token = store.list_models(page_size=1).next_page_token
    assert token is not None
    assert "readmission" not in token


@pytest.mark.parametrize("token", ["not base64 !!", "@@@", "YQ", "", "w6k=", "LWE="])
def test_garbage_page_token_is_refused(store: SqlRegistryStore, token: str) -> None:
    # "YQ" lacks padding, "w6k=" is a non-name ("é"), "LWE=" is "-a" (not a valid name)
    store.create_model("a")
    if token:  # an empty token means "first page"
        with pytest.raises(InvalidRequestError):
            store.list_models(page_token=token)
    with pytest.raises(InvalidRequestError):
        store.list_versions("a", page_token=token or "YQ==")


@pytest.mark.parametrize("size", [0, -1, 1001])
def test_page_size_out_of_range(store: SqlRegistryStore, size: int) -> None:
    with pytest.raises(InvalidRequestError):
        store.list_models(page_size=size)


def test_name_contains_filters_case_insensitively(store: SqlRegistryStore) -> None:
    for name in ["Sepsis-ICU", "sepsis-ward", "readmission", "pneumonia"]:
        store.create_model(name)
    assert [m.name for m in store.list_models(name_contains="sepsis").items] == [
        "Sepsis-ICU",
        "sepsis-ward",
    ]
    assert [m.name for m in store.list_models(name_contains="MISS").items] == ["readmission"]
    assert store.list_models(name_contains="absent").items == []


def test_name_contains_treats_wildcards_literally(store: SqlRegistryStore) -> None:
    for name in ["a_b", "axb", "a.b"]:
        store.create_model(name)
    assert [m.name for m in store.list_models(name_contains="_").items] == ["a_b"]
    assert store.list_models(name_contains="%").items == []


def test_name_contains_with_paging(store: SqlRegistryStore) -> None:
    for name in ["x-1", "y-1", "x-2", "y-2", "x-3"]:
        store.create_model(name)
    first = store.list_models(name_contains="x-", page_size=2)
    second = store.list_models(name_contains="x-", page_size=2, page_token=first.next_page_token)
    assert [m.name for m in first.items] == ["x-1", "x-2"]
    assert [m.name for m in second.items] == ["x-3"]
    assert second.next_page_token is None


def test_update_model(store: SqlRegistryStore) -> None:
    created = store.create_model("m", description="old", tags={"a": "1"})

    described = store.update_model("m", description="new")
    assert described.description == "new"
    assert described.tags == {"a": "1"}
    assert described.updated_at >= created.updated_at
    assert described.created_at == created.created_at

    tagged = store.update_model("m", tags={"b": "2"})
    assert tagged.tags == {"b": "2"}
    assert tagged.description == "new"
    assert store.get_model("m") == tagged


def test_update_missing_model(store: SqlRegistryStore) -> None:
    with pytest.raises(ModelNotFoundError):
        store.update_model("ghost", description="x")


def test_delete_model_removes_versions_aliases_and_history(
    store: SqlRegistryStore, add_version: Callable[..., ModelVersion]
) -> None:
    store.create_model("gone")
    store.create_model("kept")
    add_version("gone")
    add_version("kept")
    store.set_alias("gone", "production", 1, actor="ana")
    store.set_alias("kept", "production", 1, actor="ana")

    store.delete_model("gone")

    with pytest.raises(ModelNotFoundError):
        store.get_model("gone")
    with pytest.raises(ModelNotFoundError):
        store.get_version("gone", 1)
    assert store.all_aliases() == [("kept", "production", 1)]
    assert [m.name for m in store.list_models().items] == ["kept"]

    # The name is free again and starts from version 1 with an empty history.
    store.create_model("gone")
    assert add_version("gone").version == 1
    assert store.alias_history("gone") == []
    assert store.list_aliases("gone") == {}


def test_delete_missing_model(store: SqlRegistryStore) -> None:
    with pytest.raises(ModelNotFoundError):
        store.delete_model("ghost")


def test_missing_version_of_missing_model_names_the_model(store: SqlRegistryStore) -> None:
    with pytest.raises(ModelNotFoundError):
        store.get_version("ghost", 1)
    store.create_model("real")
    with pytest.raises(VersionNotFoundError):
        store.get_version("real", 1)
