"""The registry store contract. Every backend (SQLite, PostgreSQL) passes the same test-suite."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from medserve.core.registry.entities import AliasEvent, ModelVersion, Page, RegisteredModel


class RegistryStore(ABC):
    """Persistence for models, versions and aliases.

    Names: models match ``^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$``; aliases match
    ``^[a-z][a-z0-9_-]{0,63}$`` and must not be all digits (a number means a version).
    Invalid names raise ``InvalidRequestError``; missing things raise the matching
    ``*NotFoundError``; duplicates raise ``AlreadyExistsError``.
    """

    # -- models ---------------------------------------------------------------------------
    @abstractmethod
    def create_model(
        self,
        name: str,
        *,
        description: str = "",
        tags: dict[str, str] | None = None,
        created_by: str = "unknown",
    ) -> RegisteredModel: ...

    @abstractmethod
    def get_model(self, name: str) -> RegisteredModel: ...

    @abstractmethod
    def list_models(
        self,
        *,
        name_contains: str | None = None,
        page_size: int = 100,
        page_token: str | None = None,
    ) -> Page[RegisteredModel]:
        """Models ordered by name; ``page_token`` is opaque and comes from the previous page."""

    @abstractmethod
    def update_model(
        self,
        name: str,
        *,
        description: str | None = None,
        tags: dict[str, str] | None = None,
        actor: str = "unknown",
    ) -> RegisteredModel: ...

    @abstractmethod
    def delete_model(self, name: str, *, actor: str = "unknown") -> None:
        """Delete a model with its versions, aliases and alias history."""

    # -- versions -------------------------------------------------------------------------
    @abstractmethod
    def create_version(
        self,
        model_name: str,
        *,
        artifact_sha256: str,
        artifact_filename: str,
        flavor: str,
        runtime: str,
        runtime_reason: str = "",
        source_flavor: str = "",
        source_artifact_sha256: str | None = None,
        library_versions: dict[str, str] | None = None,
        signature: dict[str, Any] | None = None,
        tags: dict[str, str] | None = None,
        serving_config: dict[str, Any] | None = None,
        description: str = "",
        created_by: str = "unknown",
    ) -> ModelVersion:
        """Create the next version (1, 2, ...) atomically, even with concurrent writers."""

    @abstractmethod
    def get_version(self, model_name: str, version: int) -> ModelVersion: ...

    @abstractmethod
    def list_versions(
        self, model_name: str, *, page_size: int = 100, page_token: str | None = None
    ) -> Page[ModelVersion]:
        """Versions newest first."""

    @abstractmethod
    def update_version(
        self,
        model_name: str,
        version: int,
        *,
        description: str | None = None,
        tags: dict[str, str] | None = None,
        signature: dict[str, Any] | None = None,
        serving_config: dict[str, Any] | None = None,
        actor: str = "unknown",
    ) -> ModelVersion:
        """Edit the mutable fields; artifact, flavor and runtime never change."""

    # -- aliases --------------------------------------------------------------------------
    @abstractmethod
    def set_alias(
        self, model_name: str, alias: str, version: int, *, actor: str, reason: str = ""
    ) -> AliasEvent:
        """Point ``alias`` at ``version`` (which must exist) and append to the alias history."""

    @abstractmethod
    def delete_alias(
        self, model_name: str, alias: str, *, actor: str, reason: str = ""
    ) -> AliasEvent: ...

    @abstractmethod
    def get_alias(self, model_name: str, alias: str) -> int:
        """The version number an alias points at; ``AliasNotFoundError`` if unset."""

    @abstractmethod
    def list_aliases(self, model_name: str) -> dict[str, int]: ...

    @abstractmethod
    def alias_history(self, model_name: str, alias: str | None = None) -> list[AliasEvent]:
        """Every move, oldest first."""

    @abstractmethod
    def all_aliases(self) -> list[tuple[str, str, int]]:
        """(model, alias, version) for every alias of every model: what servers load."""

    @abstractmethod
    def change_token(self) -> str:
        """A cheap value that changes whenever any alias, version or model changes.

        Server workers poll this to hot-reload without a restart."""

    # -- lifecycle ------------------------------------------------------------------------
    @abstractmethod
    def close(self) -> None: ...

    def resolve(self, model_name: str, version_or_alias: str | int) -> ModelVersion:
        """A version number (``3``, ``"3"``) or an alias name (``"production"``) to a version."""
        if isinstance(version_or_alias, int):
            return self.get_version(model_name, version_or_alias)
        text = version_or_alias.strip()
        if text.isdigit():
            return self.get_version(model_name, int(text))
        return self.get_version(model_name, self.get_alias(model_name, text))
