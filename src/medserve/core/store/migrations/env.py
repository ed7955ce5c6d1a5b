"""Alembic environment: always run programmatically by medserve with a live connection."""

from __future__ import annotations

from alembic import context

from medserve.core.store.schema import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
context.run_migrations()
