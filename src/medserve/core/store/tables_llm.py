"""Language-model usage per key, UTC day and model, for deployments whose nodes share the
registry's PostgreSQL (``features/llm/budgets.py``, shared mode): the per-day history that
``keys usage`` and the usage endpoints report, written once per call by whichever node served it.
The budgets' own windows are ``cluster_counters`` rows. A single machine keeps both in its home's
SQLite file instead. Key ids and model names only, never text.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Date, String, Table

from medserve.core.store.metadata import metadata

llm_usage = Table(
    "llm_usage",
    metadata,
    Column("key_id", String(256), primary_key=True),  # the API key id (or a token's subject)
    Column("day", Date, primary_key=True),  # UTC
    Column("model", String(256), primary_key=True),
    Column("requests", BigInteger, nullable=False),
    Column("prompt_tokens", BigInteger, nullable=False),
    Column("completion_tokens", BigInteger, nullable=False),
)
