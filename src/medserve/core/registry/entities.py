"""Registry records as plain immutable values; the store returns these, never ORM rows."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class RegisteredModel:
    name: str
    description: str
    tags: dict[str, str]
    created_by: str
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class ModelVersion:
    """One immutable version. Only ``description``, ``tags``, ``signature`` and
    ``serving_config`` may be edited after creation; the artifact never changes."""

    model_name: str
    version: int
    artifact_sha256: str
    artifact_filename: str
    flavor: str  # format of the served artifact: onnx | skops | xgboost | lightgbm | pickle
    runtime: str  # runtime that serves it
    runtime_reason: str  # why that runtime was chosen (e.g. ONNX conversion verified on 569 rows)
    source_flavor: str  # what the author brought: sklearn, onnx, xgboost, lightgbm, mlflow-sklearn
    source_artifact_sha256: str | None  # original artifact when the served one was converted
    library_versions: dict[str, str]
    signature: dict[str, Any]  # medserve.core.registry.signature.Signature as JSON
    tags: dict[str, str]
    serving_config: dict[str, Any]
    description: str
    created_by: str
    created_at: datetime


@dataclass(frozen=True)
class AliasEvent:
    """One move of an alias: set (from None), moved, or deleted (to None)."""

    id: int
    model_name: str
    alias: str
    from_version: int | None
    to_version: int | None
    actor: str
    reason: str
    at: datetime


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    next_page_token: str | None = None
    total: int | None = field(default=None)
