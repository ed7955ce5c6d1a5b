"""Database access for CDS cards and feedback, on the registry's engine (SQLite or PostgreSQL)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from medserve.core.errors import NotFoundError
from medserve.core.store.base import RegistryStore
from medserve.core.store.tables_interop import cds_cards, cds_feedback
from medserve.core.store.unit_of_work import UnitOfWork, engine_of


@dataclass(frozen=True)
class IssuedCard:
    uuid: str
    service_id: str
    hook: str
    hook_instance: str | None
    model_name: str
    version: int
    indicator: str


@dataclass(frozen=True)
class Feedback:
    card_uuid: str
    outcome: str
    override_code: str | None = None
    override_system: str | None = None
    override_display: str | None = None
    user_comment: str | None = None
    accepted_suggestions: int = 0
    outcome_at: datetime | None = None


class CardNotFoundError(NotFoundError):
    code = "card_not_found"


class CdsStore:
    def __init__(self, registry_store: RegistryStore | Engine) -> None:
        self.engine = engine_of(registry_store)
        self.uow = UnitOfWork(self.engine, "CDS Hooks")

    def record_cards(self, cards: list[IssuedCard]) -> None:
        if not cards:
            return
        now = datetime.now(UTC)
        rows = [{**card.__dict__, "created_at": now} for card in cards]
        with self.uow.write() as conn:
            conn.execute(cds_cards.insert(), rows)

    def card(self, uuid: str) -> IssuedCard:
        t = cds_cards
        with self.uow.read() as conn:
            row = conn.execute(
                sa.select(
                    t.c.uuid,
                    t.c.service_id,
                    t.c.hook,
                    t.c.hook_instance,
                    t.c.model_name,
                    t.c.version,
                    t.c.indicator,
                ).where(t.c.uuid == uuid)
            ).first()
        if row is None:
            raise CardNotFoundError(f"no card {uuid!r} was issued by this service")
        return IssuedCard(*row)

    def record_feedback(
        self, service_id: str, items: list[Feedback], actor: str
    ) -> list[IssuedCard]:
        """Store every item (all or none); each must name a card this service issued."""
        cards = [self.card(item.card_uuid) for item in items]
        for card in cards:
            if card.service_id != service_id:
                raise CardNotFoundError(
                    f"card {card.uuid!r} was issued by service {card.service_id!r}, "
                    f"not {service_id!r}"
                )
        now = datetime.now(UTC)
        rows = [
            {
                "card_uuid": item.card_uuid,
                "service_id": service_id,
                "model_name": card.model_name,
                "version": card.version,
                "outcome": item.outcome,
                "override_code": item.override_code,
                "override_system": item.override_system,
                "override_display": item.override_display,
                "user_comment": item.user_comment,
                "accepted_suggestions": item.accepted_suggestions,
                "outcome_at": item.outcome_at,
                "received_at": now,
                "actor": actor,
            }
            for item, card in zip(items, cards, strict=True)
        ]
        with self.uow.write() as conn:
            conn.execute(cds_feedback.insert(), rows)
        return cards

    def feedback_summary(self, model: str) -> dict[str, Any]:
        """Counts per version and outcome, and the override reasons given, for one model."""
        t = cds_feedback
        c = cds_cards
        with self.uow.read() as conn:
            issued = conn.execute(
                sa.select(c.c.version, sa.func.count())
                .where(c.c.model_name == model)
                .group_by(c.c.version)
            ).all()
            outcomes = conn.execute(
                sa.select(t.c.version, t.c.outcome, sa.func.count())
                .where(t.c.model_name == model)
                .group_by(t.c.version, t.c.outcome)
            ).all()
            reasons = conn.execute(
                sa.select(t.c.version, t.c.override_code, t.c.override_display, sa.func.count())
                .where(t.c.model_name == model, t.c.outcome == "overridden")
                .group_by(t.c.version, t.c.override_code, t.c.override_display)
            ).all()
        versions: dict[int, dict[str, Any]] = {}

        def slot(version: int) -> dict[str, Any]:
            return versions.setdefault(
                version, {"cards": 0, "accepted": 0, "overridden": 0, "override_reasons": []}
            )

        for version, count in issued:
            slot(version)["cards"] = count
        for version, outcome, count in outcomes:
            slot(version)[outcome] = count
        for version, code, display, count in reasons:
            slot(version)["override_reasons"].append(
                {"code": code, "display": display, "count": count}
            )
        return {
            "model": model,
            "versions": [{"version": v, **versions[v]} for v in sorted(versions)],
        }
