"""Persistence of governance records (evaluations, card statements, acceptance criteria,
training runs) in the registry database, next to the versions they describe."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from medserve.core.store.base import RegistryStore
from medserve.core.store.outbox import record_change
from medserve.core.store.tables_governance import (
    gov_acceptance,
    gov_cards,
    gov_evaluations,
    gov_training_runs,
)
from medserve.core.store.unit_of_work import UnitOfWork, engine_of


def _now() -> datetime:
    return datetime.now(UTC)


class GovernanceStore:
    """Governance rows of one registry store (the version must exist: callers resolve first)."""

    def __init__(self, store: RegistryStore) -> None:
        # Its own unit of work: governance records do not affect serving, so writing one does
        # not bump the registry's reload token (servers would reload for nothing).
        self.store = store
        self.uow = UnitOfWork(engine_of(store), "governance")

    # -- evaluations ----------------------------------------------------------------------
    def save_evaluation(
        self,
        name: str,
        version: int,
        *,
        dataset_sha256: str,
        dataset_name: str,
        kind: str,
        result: dict[str, Any],
        report_sha256: str | None,
        created_by: str,
    ) -> int:
        """Store (replacing any evaluation of this version on the same data); returns its id."""
        t = gov_evaluations
        with self.uow.write() as conn:
            conn.execute(
                t.delete().where(
                    (t.c.model_name == name)
                    & (t.c.version == version)
                    & (t.c.dataset_sha256 == dataset_sha256)
                )
            )
            inserted = conn.execute(
                t.insert().values(
                    model_name=name,
                    version=version,
                    dataset_sha256=dataset_sha256,
                    dataset_name=dataset_name,
                    kind=kind,
                    result=result,
                    report_sha256=report_sha256,
                    created_by=created_by,
                    created_at=_now(),
                )
            )
            reason = f"{kind} evaluation"
            record_change(
                conn,
                "governance.evaluation_stored",
                name,
                version=version,
                actor=created_by,
                reason=reason,
            )
            key = inserted.inserted_primary_key
            return int(key[0]) if key else 0

    def evaluations(self, name: str, version: int) -> list[dict[str, Any]]:
        """Newest first."""
        t = gov_evaluations
        with self.uow.read() as conn:
            rows = conn.execute(
                sa.select(t)
                .where((t.c.model_name == name) & (t.c.version == version))
                .order_by(t.c.created_at.desc(), t.c.id.desc())
            ).mappings()
            return [{**dict(row), "created_at": row["created_at"].isoformat()} for row in rows]

    # -- card statements and acceptance criteria -----------------------------------------
    def save_card(self, name: str, version: int, author: dict[str, Any], actor: str) -> None:
        values = {"author": author, "updated_by": actor}
        self._upsert(gov_cards, name, version, values, change="governance.card_edited", actor=actor)

    def card(self, name: str, version: int) -> dict[str, Any]:
        row = self._get(gov_cards, name, version)
        return dict(row["author"]) if row else {}

    def save_criteria(
        self, name: str, version: int, criteria: list[dict[str, Any]], actor: str
    ) -> None:
        values = {"criteria": criteria, "updated_by": actor}
        self._upsert(
            gov_acceptance, name, version, values, change="governance.criteria_set", actor=actor
        )

    def criteria(self, name: str, version: int) -> list[dict[str, Any]]:
        row = self._get(gov_acceptance, name, version)
        return list(row["criteria"]) if row else []

    # -- training runs --------------------------------------------------------------------
    def save_training_run(
        self,
        name: str,
        version: int,
        record: dict[str, Any],
        spec_text: str,
        actor: str = "unknown",
    ) -> None:
        self._upsert(
            gov_training_runs,
            name,
            version,
            {"record": record, "spec_text": spec_text},
            "created_at",
            change="governance.training_run_stored",
            actor=actor,
        )

    def training_run(self, name: str, version: int) -> dict[str, Any] | None:
        row = self._get(gov_training_runs, name, version)
        return dict(row["record"]) if row else None

    # -------------------------------------------------------------------------------------
    def _get(self, table: sa.Table, name: str, version: int) -> Any:
        with self.uow.read() as conn:
            return (
                conn.execute(
                    sa.select(table).where(
                        (table.c.model_name == name) & (table.c.version == version)
                    )
                )
                .mappings()
                .first()
            )

    def _upsert(
        self,
        table: sa.Table,
        name: str,
        version: int,
        values: dict[str, Any],
        stamp: str = "updated_at",
        *,
        change: str,
        actor: str,
    ) -> None:
        """Replace the row of ``(name, version)``; the change's audit record (``change``, by
        ``actor``) is written in the same transaction."""
        where = (table.c.model_name == name) & (table.c.version == version)
        with self.uow.write() as conn:
            conn.execute(table.delete().where(where))
            conn.execute(
                table.insert().values(model_name=name, version=version, **values, **{stamp: _now()})
            )
            record_change(conn, change, name, version=version, actor=actor)
