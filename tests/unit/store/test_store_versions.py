"""Model versions: numbering, reading, listing newest first, and which fields may change."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from datetime import UTC

import pytest

from medserve.core.errors import (
    AliasNotFoundError,
    InvalidRequestError,
    ModelNotFoundError,
    VersionNotFoundError,
)
from medserve.core.registry.entities import ModelVersion
from medserve.core.store.base import RegistryStore
from medserve.core.store.sql import SqlRegistryStore

AddVersion = Callable[..., ModelVersion]

SIGNATURE = {"inputs": [{"name": "age", "type": "float64"}], "outputs": [{"name": "risk"}]}


def test_versions_are_numbered_from_one(store: SqlRegistryStore, add_version: AddVersion) -> None:
    store.create_model("m")
    store.create_model("other")
    assert [add_version("m").version for _ in range(4)] == [1, 2, 3, 4]
    # Numbering is per model.
    assert add_version("other").version == 1


def test_create_version_round_trips_every_field(store: SqlRegistryStore) -> None:
    store.create_model("m")
    created = store.create_version(
        "m",
        artifact_sha256="0f" * 32,
        artifact_filename="model.onnx",
        flavor="onnx",
        runtime="onnx",
        runtime_reason="conversion verified on 569 rows",
        source_flavor="sklearn",
        source_artifact_sha256="1e" * 32,
        library_versions={"scikit-learn": "1.5.0", "skl2onnx": "1.17.0"},
        signature=SIGNATURE,
        tags={"stage": "candidate"},
        serving_config={"max_batch_size": 32, "nested": {"timeout_ms": 5}},
        description="first cut",
        created_by="ana",
    )
    fetched = store.get_version("m", 1)

    assert fetched == created
    assert fetched.model_name == "m"
    assert fetched.version == 1
    assert fetched.artifact_sha256 == "0f" * 32
    assert fetched.source_flavor == "sklearn"
    assert fetched.source_artifact_sha256 == "1e" * 32
    assert fetched.library_versions == {"scikit-learn": "1.5.0", "skl2onnx": "1.17.0"}
    assert fetched.signature == SIGNATURE
    assert fetched.serving_config == {"max_batch_size": 32, "nested": {"timeout_ms": 5}}
    assert fetched.runtime_reason == "conversion verified on 569 rows"
    assert fetched.created_at.utcoffset() == UTC.utcoffset(None)


def test_create_version_defaults(store: SqlRegistryStore, add_version: AddVersion) -> None:
    store.create_model("m")
    version = add_version("m")
    assert version.source_flavor == "onnx"  # what was brought is what is served
    assert version.source_artifact_sha256 is None
    assert (version.library_versions, version.signature, version.tags) == ({}, {}, {})
    assert version.serving_config == {}
    assert (version.description, version.created_by) == ("", "unknown")


def test_create_version_of_missing_model(store: SqlRegistryStore, add_version: AddVersion) -> None:
    with pytest.raises(ModelNotFoundError):
        add_version("ghost")


def test_get_missing_version(store: SqlRegistryStore, add_version: AddVersion) -> None:
    store.create_model("m")
    add_version("m")
    with pytest.raises(VersionNotFoundError):
        store.get_version("m", 2)


def test_list_versions_newest_first(store: SqlRegistryStore, add_version: AddVersion) -> None:
    store.create_model("m")
    for i in range(3):
        add_version("m", description=f"v{i + 1}")
    page = store.list_versions("m")
    assert [v.version for v in page.items] == [3, 2, 1]
    assert [v.description for v in page.items] == ["v3", "v2", "v1"]
    assert page.next_page_token is None


def test_list_versions_paging(store: SqlRegistryStore, add_version: AddVersion) -> None:
    store.create_model("m")
    store.create_model("noise")
    for _ in range(5):
        add_version("m")
        add_version("noise")

    numbers: list[int] = []
    token: str | None = None
    while True:
        page = store.list_versions("m", page_size=2, page_token=token)
        assert all(v.model_name == "m" for v in page.items)
        numbers.extend(v.version for v in page.items)
        token = page.next_page_token
        if token is None:
            break
    assert numbers == [5, 4, 3, 2, 1]


def test_list_versions_of_missing_model(store: SqlRegistryStore) -> None:
    with pytest.raises(ModelNotFoundError):
        store.list_versions("ghost")


def test_list_versions_of_model_without_versions(store: SqlRegistryStore) -> None:
    store.create_model("empty")
    assert store.list_versions("empty").items == []


def test_update_version_changes_only_mutable_fields(
    store: SqlRegistryStore, add_version: AddVersion
) -> None:
    store.create_model("m")
    original = add_version("m", tags={"a": "1"}, signature=SIGNATURE, description="before")

    updated = store.update_version(
        "m",
        1,
        description="after",
        tags={"b": "2"},
        signature={"inputs": []},
        serving_config={"max_batch_size": 8},
    )

    assert updated.description == "after"
    assert updated.tags == {"b": "2"}
    assert updated.signature == {"inputs": []}
    assert updated.serving_config == {"max_batch_size": 8}
    assert store.get_version("m", 1) == updated
    unchanged = {"description", "tags", "signature", "serving_config"}
    for field in dataclasses.fields(ModelVersion):
        if field.name not in unchanged:
            assert getattr(updated, field.name) == getattr(original, field.name), field.name


def test_update_version_leaves_unset_fields_alone(
    store: SqlRegistryStore, add_version: AddVersion
) -> None:
    store.create_model("m")
    original = add_version("m", tags={"a": "1"}, signature=SIGNATURE, description="keep")
    updated = store.update_version("m", 1, serving_config={"x": 1})
    assert (updated.tags, updated.signature, updated.description) == (
        original.tags,
        original.signature,
        original.description,
    )
    assert store.update_version("m", 1) == updated  # nothing asked, nothing changed


def test_update_missing_version(store: SqlRegistryStore, add_version: AddVersion) -> None:
    store.create_model("m")
    with pytest.raises(VersionNotFoundError):
        store.update_version("m", 1, description="x")
    with pytest.raises(ModelNotFoundError):
        store.update_version("ghost", 1, description="x")


@pytest.mark.parametrize(
    "field",
    ["artifact_sha256", "artifact_filename", "flavor", "runtime", "source_artifact_sha256"],
)
def test_artifact_fields_cannot_be_updated(
    store: SqlRegistryStore, add_version: AddVersion, field: str
) -> None:
    """Immutability is in the API itself: update_version has no parameter for these."""
    for method in (RegistryStore.update_version, SqlRegistryStore.update_version):
        assert field not in inspect.signature(method).parameters
    store.create_model("m")
    add_version("m")
    with pytest.raises(TypeError):
        store.update_version("m", 1, **{field: "cd" * 32})
    assert store.get_version("m", 1).artifact_sha256 == "ab" * 32


def test_versions_are_frozen_values(store: SqlRegistryStore, add_version: AddVersion) -> None:
    store.create_model("m")
    version = add_version("m")
    with pytest.raises(dataclasses.FrozenInstanceError):
        version.artifact_sha256 = "cd" * 32  # type: ignore[misc]


def test_version_numbers_are_not_reused_after_a_failed_write(
    store: SqlRegistryStore, add_version: AddVersion
) -> None:
    store.create_model("m")
    add_version("m")
    with pytest.raises(ModelNotFoundError):
        add_version("ghost")
    assert add_version("m").version == 2


def test_resolve_by_number_numeric_string_and_alias(
    store: SqlRegistryStore, add_version: AddVersion
) -> None:
    store.create_model("m")
    add_version("m", description="one")
    add_version("m", description="two")
    store.set_alias("m", "production", 1, actor="ana")

    assert store.resolve("m", 2).description == "two"
    assert store.resolve("m", "2").description == "two"
    assert store.resolve("m", " 1 ").description == "one"
    assert store.resolve("m", "production").description == "one"


def test_resolve_errors(store: SqlRegistryStore, add_version: AddVersion) -> None:
    store.create_model("m")
    add_version("m")
    with pytest.raises(VersionNotFoundError):
        store.resolve("m", 7)
    with pytest.raises(VersionNotFoundError):
        store.resolve("m", "7")
    with pytest.raises(AliasNotFoundError):
        store.resolve("m", "staging")
    with pytest.raises(ModelNotFoundError):
        store.resolve("ghost", "production")
    with pytest.raises(ModelNotFoundError):
        store.resolve("ghost", 1)


def test_invalid_page_token_for_versions(store: SqlRegistryStore) -> None:
    store.create_model("m")
    with pytest.raises(InvalidRequestError):
        store.list_versions("m", page_token="bm90LWEtbnVtYmVy")  # "not-a-number"
