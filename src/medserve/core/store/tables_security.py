"""Tables of the security capability, on the shared registry metadata (own alembic branch).

``sec_state.counter`` changes with every key or tenant change: each worker compares it with
the value its caches were built at, so a revocation applies on the next request everywhere.
``sec_audit`` is append-only and hash-chained: ``seq`` is dense from 1, and each row's ``hash``
covers its own fields and the previous row's hash.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Integer,
    String,
    Table,
    Text,
)

from medserve.core.store.metadata import metadata

sec_state = Table(
    "sec_state",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("counter", BigInteger, nullable=False),
)

sec_api_keys = Table(
    "sec_api_keys",
    metadata,
    Column("key_id", String(32), primary_key=True),
    Column("secret_sha256", String(64), nullable=False),
    Column("name", String(256), nullable=False),
    Column("roles", JSON, nullable=False),
    Column("models", JSON, nullable=True),
    Column("tenant", String(128), nullable=True),
    Column("rate_limit", Integer, nullable=True),
    Column("created_by", String(256), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=True),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
)

sec_model_tenants = Table(
    "sec_model_tenants",
    metadata,
    Column("model_name", String(128), primary_key=True),
    Column("tenant", String(128), nullable=False),
)

sec_audit = Table(
    "sec_audit",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("at", DateTime(timezone=True), nullable=False, index=True),
    Column("actor", String(256), nullable=False),
    Column("key_id", String(32), nullable=True),
    Column("action", String(64), nullable=False),
    Column("model", String(128), nullable=True),
    Column("version", String(64), nullable=True),
    Column("client", String(64), nullable=True),
    Column("outcome", Integer, nullable=False),
    Column("request_id", String(64), nullable=True),
    Column("patient_hash", String(64), nullable=True),
    Column("detail", Text, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    # the id of the audit key whose HMAC sealed the row (NULL: a plain sha256 row from before)
    Column("chain_key", String(32), nullable=True),
)

# A key's settings for language models (migration 0013, branch ``llm``): its PHI policy, whether
# it may send identifiers to a model (``phi_allow``), and its budgets (NULL: the server default).
# A table of its own, not columns of ``sec_api_keys``: most keys never call a language model, and
# the key cache of the guard does not need these on every request.
sec_key_llm = Table(
    "sec_key_llm",
    metadata,
    Column("key_id", String(32), primary_key=True),
    Column("phi_policy", String(16), nullable=True),
    Column("phi_allow", Boolean, nullable=False),
    Column("requests_per_minute", Integer, nullable=True),
    Column("tokens_per_minute", BigInteger, nullable=True),
    Column("tokens_per_day", BigInteger, nullable=True),
    Column("max_tokens", Integer, nullable=True),
    Column("max_context", Integer, nullable=True),
    Column("updated_by", String(256), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

__all__ = [
    "metadata",
    "sec_api_keys",
    "sec_audit",
    "sec_key_llm",
    "sec_model_tenants",
    "sec_state",
]
