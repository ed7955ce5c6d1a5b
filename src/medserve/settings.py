"""Process-wide settings, read from ``MEDSERVE_*`` environment variables."""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MEDSERVE_", extra="ignore")

    home: Path = Field(
        default=Path(".medserve"),
        description="The embedded home: SQLite registry file, artifact store and keys live here.",
    )
    store_uri: str | None = Field(
        default=None,
        description=(
            "Registry database URI. Unset means an embedded SQLite file inside `home`; "
            "`postgresql+psycopg://user:pass@host/db` for a shared PostgreSQL."
        ),
    )
    artifact_root: Path | None = Field(
        default=None,
        description="Where artifacts are stored (content addressed). Unset means `home/artifacts`.",
    )
    host: str = Field(
        default="127.0.0.1", description="Address the server binds; loopback by default."
    )
    port: int = Field(default=8000, description="TCP port the server listens on.")
    workers: int = Field(
        default_factory=lambda: os.cpu_count() or 1,
        description="Server worker processes; one per core by default.",
    )
    max_body_bytes: int = Field(
        default=8 * 1024 * 1024,
        description="Largest request body accepted; larger bodies get 413 before they are parsed.",
    )
    max_loaded_versions: int = Field(
        default=16,
        description="LRU bound on versions loaded by number (aliased versions always stay).",
    )
    reload_interval_s: float = Field(
        default=1.0,
        description="How often each worker checks the registry for moved aliases (hot reload).",
    )
    onnx_intra_op_threads: int = Field(
        default=1,
        description="onnxruntime intra-op threads; 1 is fastest for small tabular models.",
    )

    @cached_property
    def resolved_store_uri(self) -> str:
        if self.store_uri:
            return self.store_uri
        return f"sqlite:///{(self.home / 'registry.db').resolve()}"

    @cached_property
    def resolved_artifact_root(self) -> Path:
        return (self.artifact_root or self.home / "artifacts").resolve()


def get_settings() -> Settings:
    return Settings()
