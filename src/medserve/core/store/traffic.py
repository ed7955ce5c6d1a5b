"""Persistence of traffic splits (canary and shadow versions behind an alias) and of what shadow
versions answered.

A split change affects what is served, so it bumps the registry's reload token in its own
transaction (every worker and Ray replica follows it on its next poll) and writes its audit
record there too (the outbox), exactly as an alias move does.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from medserve.core.errors import AliasNotFoundError, InvalidRequestError, VersionNotFoundError
from medserve.core.store.base import RegistryStore
from medserve.core.store.outbox import record_change
from medserve.core.store.schema import aliases, model_versions, registry_state
from medserve.core.store.tables_traffic import traffic_routes, traffic_shadow
from medserve.core.store.unit_of_work import UnitOfWork, engine_of

CANARY = "canary"
SHADOW = "shadow"


@dataclass(frozen=True)
class Route:
    """One version besides the alias's own: a canary answering ``weight`` percent of the
    alias's requests, or a shadow (weight 0) getting a copy of them."""

    version: int
    role: str
    weight: int


@dataclass(frozen=True)
class TrafficPolicy:
    """How an alias's traffic is shared: its own version answers what the canaries do not."""

    model: str
    alias: str
    primary: int
    canaries: tuple[Route, ...]
    shadows: tuple[Route, ...]

    @property
    def primary_weight(self) -> int:
        return 100 - sum(r.weight for r in self.canaries)

    def weights(self) -> dict[int, int]:
        return {self.primary: self.primary_weight, **{r.version: r.weight for r in self.canaries}}

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "alias": self.alias,
            "version": self.primary,
            "split": {str(v): w for v, w in self.weights().items()},
            "shadow": [r.version for r in self.shadows],
        }


def _bump_change_token(conn: Connection) -> None:
    conn.execute(
        registry_state.update()
        .where(registry_state.c.id == 1)
        .values(counter=registry_state.c.counter + 1)
    )


class TrafficStore:
    def __init__(self, store: RegistryStore) -> None:
        self.store = store
        engine = engine_of(store)
        self.uow = UnitOfWork(engine, "traffic")

    # -- splits ---------------------------------------------------------------------------
    def set_routes(
        self,
        model: str,
        alias: str,
        canaries: dict[int, int],
        shadows: list[int],
        *,
        actor: str,
        reason: str = "",
    ) -> TrafficPolicy:
        """Replace the alias's canaries and shadows (the alias's own version must exist and is
        not one of them); empty both to end a split."""
        if any(w <= 0 or w >= 100 for w in canaries.values()) or sum(canaries.values()) >= 100:
            raise InvalidRequestError(
                "split: each canary weight must be 1-99 and together below 100 (the alias's "
                "own version answers the rest)"
            )
        if set(canaries) & set(shadows):
            raise InvalidRequestError("split: a version cannot be both a canary and a shadow")
        now = datetime.now(UTC)
        with self.uow.write(_bump_change_token) as conn:
            primary = conn.execute(
                sa.select(aliases.c.version)
                .where(aliases.c.model_name == model, aliases.c.alias == alias)
                .with_for_update()
            ).scalar_one_or_none()
            if primary is None:
                raise AliasNotFoundError(
                    f"model {model!r} has no {alias!r} alias: point it at a version first"
                )
            if primary in canaries or primary in shadows:
                raise InvalidRequestError(
                    f"split: version {primary} is the alias's own version, not a canary or shadow"
                )
            for version in [*canaries, *shadows]:
                found = conn.execute(
                    sa.select(model_versions.c.version).where(
                        model_versions.c.model_name == model, model_versions.c.version == version
                    )
                ).first()
                if found is None:
                    raise VersionNotFoundError(f"model {model!r} has no version {version}")
            conn.execute(
                traffic_routes.delete().where(
                    traffic_routes.c.model_name == model, traffic_routes.c.alias == alias
                )
            )
            rows = [(v, CANARY, w) for v, w in sorted(canaries.items())]
            rows += [(v, SHADOW, 0) for v in sorted(shadows)]
            for version, role, weight in rows:
                conn.execute(
                    traffic_routes.insert().values(
                        model_name=model,
                        alias=alias,
                        version=version,
                        role=role,
                        weight=weight,
                        updated_by=actor,
                        updated_at=now,
                    )
                )
            policy = _policy(model, alias, int(primary), rows)
            split = ", ".join(f"v{v}: {w}%" for v, w in policy.weights().items())
            text = f"traffic split {{{split}}}"
            if shadows:
                text += f"; shadow {', '.join(f'v{v}' for v in sorted(shadows))}"
            record_change(
                conn,
                "registry.traffic_set",
                model,
                version=int(primary),
                alias=alias,
                actor=actor,
                reason=f"{text}; {reason}" if reason else text,
            )
        return policy

    def policy(self, model: str, alias: str) -> TrafficPolicy:
        primary = self.store.get_alias(model, alias)
        t = traffic_routes
        with self.uow.read() as conn:
            rows = conn.execute(
                sa.select(t.c.version, t.c.role, t.c.weight).where(
                    t.c.model_name == model, t.c.alias == alias
                )
            ).all()
        return _policy(model, alias, primary, [(int(v), str(r), int(w)) for v, r, w in rows])

    def all_policies(self) -> dict[tuple[str, str], TrafficPolicy]:
        """Every alias with a canary or a shadow (the others serve their one version). A row
        that names the alias's own version (the alias moved since) is left out."""
        t = traffic_routes
        with self.uow.read() as conn:
            rows = conn.execute(
                sa.select(
                    t.c.model_name, t.c.alias, t.c.version, t.c.role, t.c.weight, aliases.c.version
                ).join(
                    aliases,
                    sa.and_(aliases.c.model_name == t.c.model_name, aliases.c.alias == t.c.alias),
                )
            ).all()
        grouped: dict[tuple[str, str], tuple[int, list[tuple[int, str, int]]]] = {}
        for model, alias, version, role, weight, primary in rows:
            entry = grouped.setdefault((model, alias), (int(primary), []))
            if int(version) != int(primary):
                entry[1].append((int(version), str(role), int(weight)))
        return {
            key: _policy(key[0], key[1], primary, routes)
            for key, (primary, routes) in grouped.items()
            if routes
        }

    # -- shadow results -------------------------------------------------------------------
    def add_shadow_results(self, rows: list[dict[str, Any]]) -> None:
        if rows:
            with self.uow.write() as conn:
                conn.execute(traffic_shadow.insert(), rows)

    def shadow_results(
        self, model: str, since: datetime | None = None, limit: int = 100_000
    ) -> list[dict[str, Any]]:
        s = traffic_shadow
        query = sa.select(s).where(s.c.model_name == model).order_by(s.c.id.desc()).limit(limit)
        if since is not None:
            query = query.where(s.c.at >= since)
        with self.uow.read() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]


def _policy(
    model: str, alias: str, primary: int, rows: list[tuple[int, str, int]]
) -> TrafficPolicy:
    canaries = tuple(Route(v, r, w) for v, r, w in rows if r == CANARY and v != primary)
    shadows = tuple(Route(v, r, 0) for v, r, _ in rows if r == SHADOW and v != primary)
    return TrafficPolicy(model, alias, primary, canaries, shadows)
