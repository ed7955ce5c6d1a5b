"""Tables of traffic splitting (canary and shadow versions behind an alias), on the shared
registry metadata (own alembic branch, revision 0016).

``traffic_routes`` holds, per alias, the versions that share its traffic besides the alias's own
version (``role`` ``canary`` with a ``weight`` in percent; the alias's version answers the rest)
and the versions that get a copy of it (``role`` ``shadow``, weight 0). ``traffic_shadow`` keeps
what a shadow answered next to what the live version answered for the same request: outputs
and latencies only, never the inputs (no patient data), so versions can be compared.

``cluster_counters`` (same branch: the cluster's shared governance) holds fixed-window counters
that every replica of a deployment adds to (``core/store/counters.py``): rate limits, and any
other per-credential quota. Keys are digests, never a credential or a person's name.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    String,
    Table,
    Text,
)

from medserve.core.store.metadata import metadata

traffic_routes = Table(
    "traffic_routes",
    metadata,
    Column("model_name", String(128), primary_key=True),
    Column("alias", String(64), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("role", String(16), nullable=False),  # canary | shadow
    Column("weight", Integer, nullable=False),  # percent of the alias's traffic (0: a shadow)
    Column("updated_by", String(256), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

traffic_shadow = Table(
    "traffic_shadow",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("model_name", String(128), nullable=False),
    Column("alias", String(64), nullable=False),
    Column("live_version", Integer, nullable=False),
    Column("shadow_version", Integer, nullable=False),
    Column("request_id", String(96), nullable=False),  # as the prediction log keeps it
    Column("rows", Integer, nullable=False),
    Column("live_outputs", Text, nullable=False),  # JSON {output: [value per row]}
    Column("shadow_outputs", Text, nullable=True),  # NULL: the shadow failed (see error)
    Column("agree", Float, nullable=True),  # share of rows whose labels (or values) agree
    Column("live_ms", Float, nullable=False),
    Column("shadow_ms", Float, nullable=True),
    Column("error", Text, nullable=True),  # the shadow's error code and message
    Column("failed", Boolean, nullable=False),
    Index("ix_traffic_shadow_model_at", "model_name", "at"),
)

cluster_counters = Table(
    "cluster_counters",
    metadata,
    Column("scope", String(32), primary_key=True),  # what is counted: "rate", ...
    Column("counter_key", String(64), primary_key=True),  # a digest of the credential
    Column("window_ms", BigInteger, primary_key=True),  # the window's start, epoch ms (DB clock)
    Column("until_ms", BigInteger, nullable=False),  # its end: swept once passed
    Column("total", BigInteger, nullable=False),
    Index("ix_cluster_counters_until", "until_ms"),
)
