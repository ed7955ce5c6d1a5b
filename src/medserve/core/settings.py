"""Process-wide settings, read from ``MEDSERVE_*`` environment variables."""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Literal

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
    artifact_uri: str | None = Field(
        default=None,
        description=(
            "Shared artifact storage: `s3://bucket/prefix` (S3-compatible; endpoint and "
            "credentials from the AWS_* environment, e.g. AWS_ENDPOINT_URL_S3), read through a "
            "local cache in `artifact_root`. Unset: artifacts on local disk in `artifact_root`."
        ),
    )
    artifact_cache_bytes: int = Field(
        default=10 << 30,
        gt=0,
        description="Size bound of the local read-through cache of S3 artifacts, in bytes.",
    )
    host: str = Field(
        default="127.0.0.1", description="Address the server binds; loopback by default."
    )
    port: int = Field(default=8000, description="TCP port the server listens on.")
    grpc_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description=(
            "TCP port of the Open Inference Protocol v2 gRPC endpoint, on `host` with the same "
            "TLS options as HTTP (docs/grpc.md). Unset (the default): no gRPC."
        ),
    )
    workers: int = Field(
        default_factory=lambda: os.cpu_count() or 1,
        description="Server worker processes; one per core by default.",
    )
    access_log: bool = Field(
        default=True,
        description="One line per HTTP request on stderr: method, route template, status, "
        "latency, request id (never paths, bodies or caller ids).",
    )
    log_format: Literal["text", "json"] = Field(
        default="text", description="Access-log lines as text or as JSON lines."
    )
    max_body_bytes: int = Field(
        default=8 * 1024 * 1024,
        description="Largest request body accepted; larger bodies get 413 before they are parsed.",
    )
    body_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description=(
            "Longest wait for the next piece of a request body; a client that stalls gets 408 "
            "and its connection is not held (headers are uvicorn's: it has no read timeout)."
        ),
    )
    max_loaded_versions: int = Field(
        default=16,
        description="LRU bound on versions loaded by number (aliased versions always stay).",
    )
    reload_interval_s: float = Field(
        default=1.0,
        description="How often each worker checks the registry for moved aliases (hot reload).",
    )
    migrate_on_start: bool = Field(
        default=True,
        description=(
            "Whether each server worker migrates the store at start-up; `medserve serve` migrates "
            "once in the parent and turns this off for its workers."
        ),
    )
    onnx_intra_op_threads: int = Field(
        default=1,
        description="onnxruntime intra-op threads; 1 is fastest for small tabular models.",
    )

    security: bool = Field(
        default=True,
        description=(
            "Authentication, authorization and the audit trail. Off only for `medserve demo` "
            "(MEDSERVE_SECURITY=off); `medserve serve` refuses to bind a non-loopback host open."
        ),
    )
    oidc_issuer: str | None = Field(
        default=None, description="OIDC issuer (`iss`) accepted for bearer JWTs; unset: no JWTs."
    )
    oidc_audience: str | None = Field(
        default=None,
        description=(
            "Audience (`aud`) a bearer JWT must carry; several, comma-separated, accept any of "
            "them (CDS Hooks clients send the called service's URL)."
        ),
    )
    oidc_jwks: str | None = Field(
        default=None,
        description="JWKS with the issuer's signing keys: a file path or an https:// URL.",
    )
    oidc_leeway_s: float = Field(
        default=60.0, description="Clock skew tolerated on `exp`/`nbf`/`iat`, in seconds."
    )
    oidc_roles_claim: str = Field(
        default="roles", description="JWT claim listing medserve roles (admin, app, ...)."
    )
    oidc_tenant_claim: str = Field(default="tenant", description="JWT claim naming the tenant.")
    oidc_algorithms: list[str] = Field(
        default=["RS256", "ES256"], description="Signature algorithms accepted for JWTs."
    )
    rate_limit_per_key: float = Field(
        default=0.0,
        description=(
            "Default requests/second per credential (0: unlimited); keys can set their own. "
            "Enforced per worker process as limit / workers."
        ),
    )
    shared_rate_limits: bool = Field(
        default=False,
        description=(
            "Count rate limits once for the whole deployment in the registry's PostgreSQL (one "
            "statement per limited request) instead of limit / workers in each process: set by "
            "the Ray backend for its replicas; useful for uvicorn servers on several machines."
        ),
    )
    auth_cache_ttl_s: float = Field(
        default=30.0,
        description=(
            "How long a verified credential stays cached in a worker. Revocations still apply "
            "on the next request: every request compares the security change counter."
        ),
    )
    security_poll_s: float = Field(
        default=0.5,
        description=(
            "PostgreSQL stores only: how often workers read the security change counter "
            "(SQLite homes read it on every request, a few microseconds)."
        ),
    )
    audit_queue_size: int = Field(
        default=200_000, description="Bound of the in-memory queue of prediction audit entries."
    )
    journal: bool = Field(
        default=True,
        description=(
            "Journal every audit entry and prediction-log record to a per-worker file under "
            "MEDSERVE_HOME/journal before the answer is sent, so a killed worker loses nothing "
            "it acknowledged (replayed at the next start). Off only to measure its cost."
        ),
    )
    journal_fsync_ms: float = Field(
        default=0.0,
        ge=0.0,
        description=(
            "Flush the journals to disk every this many milliseconds (group commit): the most "
            "a power cut can lose. 0 (the default): records survive a killed process, not a "
            "power cut."
        ),
    )
    encryption_key_file: Path | None = Field(
        default=None,
        description=(
            "Keys for encryption at rest (JSON {key_id: base64 32-byte key, ...}, newest "
            "`primary`). Unset: `home/keys/data_keys.json`, created on first use. "
            "MEDSERVE_ENCRYPTION_KEYS may hold the same JSON instead of a file."
        ),
    )
    tls_certfile: Path | None = Field(default=None, description="TLS certificate chain (PEM).")
    tls_keyfile: Path | None = Field(default=None, description="TLS private key (PEM).")
    tls_client_ca: Path | None = Field(
        default=None,
        description="CA bundle (PEM) for client certificates; set: clients must present one.",
    )
    cds_fhir_servers: list[str] = Field(
        default_factory=list,
        description=(
            "FHIR base URLs a CDS Hooks call may make medserve query when its prefetch is "
            "incomplete. Empty (default): never query, answer 412 instead: a URL taken from a "
            "request is otherwise a server-side request forgery vector."
        ),
    )
    upstream_credentials: list[str] = Field(
        default_factory=list,
        description=(
            "Environment variables an upstream route may name as its API key (api_key_env), "
            "besides those named MEDSERVE_UPSTREAM_KEY_*, which are always allowed; JSON, e.g. "
            "'[\"CLUSTER_LLM_KEY\"]'. Any other variable is refused: a route must not make the "
            "server send, say, its database password to a URL of the route's choosing."
        ),
    )
    upstream_secrets_dir: Path | None = Field(
        default=None,
        description=(
            "The folder whose files an upstream route may name as its API key (api_key_file; "
            "symbolic links resolved first). Unset: `home/secrets`."
        ),
    )
    public_url: str | None = Field(
        default=None,
        description=(
            "Base URL clients reach this server at, for links in CDS cards and FHIR resources; "
            "unset: card links (source.url) are left out."
        ),
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
