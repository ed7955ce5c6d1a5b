"""Database access for monitoring, on the registry's engine (SQLite or PostgreSQL).

Writes here do not bump the registry's change counter: a prediction-log batch or a drift run
is not a registry change, and must not make every worker re-read its aliases.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine, RowMapping

from medserve.core.audit import AuditEntry, AuditLog
from medserve.core.context import request_id_time_us
from medserve.core.errors import InvalidRequestError, NotFoundError
from medserve.core.monitoring_config import ModelMonitoringConfig
from medserve.core.prediction_log import EPOCH, OWN_ID_LAG_US, from_us, npy_rows
from medserve.core.store.base import RegistryStore
from medserve.core.store.outbox import record_change
from medserve.core.store.tables_monitoring import (
    PACKED_SPAN_S,
    mon_alerts,
    mon_configs,
    mon_outcomes,
    mon_prediction_batches,
    mon_prediction_ids,
    mon_references,
    mon_rules,
    mon_runs,
)
from medserve.core.store.unit_of_work import UnitOfWork, engine_of

RULE_OPS = (">", ">=", "<", "<=")
# What an alert rule may watch (``runner.metric_value`` reads them from a run): the window's
# drift summary, live performance, or a per-feature figure as ``KIND:FEATURE`` (a prediction
# column too, e.g. ``psi:p:malignant``). A rule on another name could never fire: refused.
SUMMARY_METRICS = (
    "psi_max",
    "prediction_psi",
    "missing_rate_max",
    "out_of_range_rate_max",
)
PERFORMANCE_METRICS = (
    "auroc",
    "sensitivity",
    "ppv",
    "observed_expected",
    "calibration_slope",
    "mae",
    "rmse",
    "bias",
)
FEATURE_METRICS = (
    "psi",
    "ks_statistic",
    "ks_pvalue",
    "chi2",
    "chi2_pvalue",
    "missing_rate",
    "out_of_range_rate",
    "mean",
)
WINDOW_PAGE_ROWS = 32_768  # predictions read per query when a window is streamed
RETENTION_PURGE = "monitoring.retention_purge"  # outbox kind (32 characters at most)
MAX_OUTCOME_PROBLEMS = 20  # refused outcomes listed in one answer (the message has the count)
_SHOWN_CLASSES = 10  # classes named in a refusal, each cut to _SHOWN_CLASS_CHARS
_SHOWN_CLASS_CHARS = 40


@dataclass
class Purged:
    """What one retention purge removed from a model's prediction log."""

    model: str
    cutoff: datetime
    rows: int = 0  # packed log rows (mon_prediction_batches)
    predictions: int = 0  # predictions those rows held
    outcomes: int = 0

    def reason(self, why: str = "") -> str:
        """The audit entry's reason: counts and the cutoff, never a value from the log."""
        when = self.cutoff.strftime("%Y-%m-%dT%H:%M:%SZ")
        text = (
            f"{self.rows} rows older than {when} ({self.predictions} predictions, "
            f"{self.outcomes} outcomes)"
        )
        return f"{text}; {why}" if why else text


def _utc(value: datetime | None) -> datetime | None:
    return None if value is None else _aware(value)


def _aware(value: datetime) -> datetime:
    """UTC; a naive time is taken to be UTC already (SQLite hands times back naive)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@dataclass(frozen=True)
class LoggedPrediction:
    id: str
    model_name: str
    version: int
    at: datetime
    patient: str | None
    site: str | None
    inputs: list[Any]
    outputs: dict[str, Any]
    outcome: Any
    outcome_at: datetime | None
    latency_ms: float | None = None


@dataclass
class WindowBatch:
    """One stored batch of a model version, decoded for monitoring (see ``window_batches``).

    ``inputs`` is the logged matrix as stored: the ``.npy`` matrix itself (float32 for an
    all-numeric signature, never through decimal text, so values compare with the reference
    exactly as the model got them), or JSON rows for other signatures. ``keep`` selects the rows
    in the window (``None``: all of them). ``missing`` is ``[[row, feature, count], ...]``: what
    arrived missing before imputation. ``outcomes`` maps a row to its decoded outcome.
    """

    seq: int
    version: int
    n: int
    keep: np.ndarray | None
    inputs: np.ndarray | list[list[Any]]
    outputs: dict[str, Any]
    missing: list[list[int]]
    outcomes: dict[int, Any]
    sites_json: str | None

    @property
    def kept(self) -> int:
        return self.n if self.keep is None else int(self.keep.sum())

    def sites(self) -> list[str | None]:
        """Each row's site (decoded on demand: only labelled rows need it)."""
        if self.sites_json is None:
            return [None] * self.n
        found: list[str | None] = orjson.loads(self.sites_json)
        return found


@dataclass(frozen=True)
class AlertRule:
    id: int
    model_name: str
    metric: str
    op: str
    threshold: float
    min_n: int
    consecutive: int
    streak: int
    enabled: bool

    def breached(self, value: float) -> bool:
        return {
            ">": value > self.threshold,
            ">=": value >= self.threshold,
            "<": value < self.threshold,
            "<=": value <= self.threshold,
        }[self.op]


class MonitoringStore:
    def __init__(self, registry_store: RegistryStore | Engine) -> None:
        self.engine = engine_of(registry_store)
        self.uow = UnitOfWork(self.engine, "monitoring")
        self._read = self.uow.read
        self._write = self.uow.write

    def transaction(self) -> AbstractContextManager[Connection]:
        """A write transaction (for multi-step updates such as rule evaluation)."""
        return self.uow.write()

    # -- references -------------------------------------------------------------------------
    def put_reference(
        self,
        model: str,
        version: int,
        reference: dict[str, Any],
        importance: dict[str, Any] | None,
        at: datetime,
    ) -> None:
        t = mon_references
        with self._write() as conn:
            conn.execute(t.delete().where(t.c.model_name == model, t.c.version == version))
            conn.execute(
                t.insert().values(
                    model_name=model,
                    version=version,
                    reference=reference,
                    importance=importance,
                    created_at=at,
                )
            )

    def put_importance(self, model: str, version: int, importance: dict[str, Any]) -> None:
        """Add the global importance to a stored reference (explain computes it afterwards)."""
        t = mon_references
        with self._write() as conn:
            conn.execute(
                t.update()
                .where(t.c.model_name == model, t.c.version == version)
                .values(importance=importance)
            )

    def reference(self, model: str, version: int) -> tuple[dict[str, Any], dict[str, Any] | None]:
        t = mon_references
        with self._read() as conn:
            row = (
                conn.execute(sa.select(t).where(t.c.model_name == model, t.c.version == version))
                .mappings()
                .first()
            )
        if row is None:
            raise NotFoundError(f"no monitoring reference stored for {model} v{version}")
        return dict(row["reference"]), (dict(row["importance"]) if row["importance"] else None)

    # -- per-model configuration ------------------------------------------------------------
    def config(self, model: str) -> ModelMonitoringConfig:
        with self._read() as conn:
            row = conn.execute(
                sa.select(mon_configs.c.config).where(mon_configs.c.model_name == model)
            ).first()
        return ModelMonitoringConfig.model_validate(row[0] if row else {})

    def set_config(self, model: str, config: ModelMonitoringConfig, actor: str) -> None:
        t = mon_configs
        with self._write() as conn:
            conn.execute(t.delete().where(t.c.model_name == model))
            conn.execute(
                t.insert().values(
                    model_name=model,
                    config=config.model_dump(mode="json"),
                    updated_by=actor,
                    updated_at=datetime.now(UTC),
                )
            )
            record_change(conn, "monitoring.config_set", model, actor=actor)

    # -- prediction log ---------------------------------------------------------------------
    # Rows are packed one batch per table row (see monitoring/prediction_log.py); these
    # methods unpack them, so callers see one ``LoggedPrediction`` per prediction.
    def count_predictions(self, model: str | None = None) -> int:
        b = mon_prediction_batches
        query = sa.select(sa.func.coalesce(sa.func.sum(b.c.n), 0))
        if model is not None:
            query = query.where(b.c.model_name == model)
        with self._read() as conn:
            return int(conn.execute(query).scalar_one())

    def logged_models(self) -> list[str]:
        """The models with logged predictions."""
        b = mon_prediction_batches
        with self._read() as conn:
            rows = conn.execute(sa.select(b.c.model_name).distinct().order_by(b.c.model_name))
            return [str(name) for (name,) in rows]

    def prediction_ids(self, model: str) -> list[str]:
        b = mon_prediction_batches
        query = sa.select(b.c.ids).where(b.c.model_name == model).order_by(b.c.seq)
        with self._read() as conn:
            return [i for (ids,) in conn.execute(query) for i in orjson.loads(ids)]

    def predictions(self, model: str, start: datetime, end: datetime) -> list[LoggedPrediction]:
        """Predictions logged in ``[start, end)``, oldest batch first, with their outcomes."""
        start, end = _aware(start), _aware(end)
        b = mon_prediction_batches
        window = sa.and_(_overlapping(start, end), b.c.model_name == model)
        with self._read() as conn:
            batches = conn.execute(sa.select(b).where(window).order_by(b.c.seq)).mappings().all()
            o = mon_outcomes
            joined = sa.select(o).join(b, b.c.seq == o.c.batch_seq).where(window)
            outcomes = {(r.batch_seq, r.idx): r for r in conn.execute(joined)}
        low, high = _us(start), _us(end)
        found: list[LoggedPrediction] = []
        for batch in batches:
            found.extend(_unpack(batch, outcomes, low, high))
        return found

    def window_batches(
        self,
        model: str,
        start: datetime,
        end: datetime,
        *,
        labelled_only: bool = False,
        page_rows: int = WINDOW_PAGE_ROWS,
    ) -> Iterator[WindowBatch]:
        """The batches holding ``model``'s predictions logged in ``[start, end)``, oldest first,
        read a page at a time (by ``seq``, about ``page_rows`` predictions a query), so that a
        caller folding them into fixed-size summaries holds one page, whatever the window.

        ``labelled_only``: only batches with an outcome attached. Ids and patients are not read;
        a batch's times are read only where it straddles the window's edges.
        """
        start, end = _aware(start), _aware(end)
        b, o = mon_prediction_batches, mon_outcomes
        inside = sa.and_(b.c.first_at >= start, b.c.last_at < end)
        times = sa.case((inside, sa.null()), else_=b.c.times).label("times")
        window = sa.and_(_overlapping(start, end), b.c.model_name == model)
        if labelled_only:
            window = sa.and_(window, sa.exists().where(o.c.batch_seq == b.c.seq))
        columns = (
            b.c.seq,
            b.c.version,
            b.c.n,
            times,
            b.c.inputs,
            b.c.inputs_npy,
            b.c.outputs,
            b.c.missing,
            b.c.sites,
        )
        low, high = _us(start), _us(end)
        after, page = -1, 16  # batches per query: adapted to the rows they hold
        while True:
            query = sa.select(*columns).where(window, b.c.seq > after).order_by(b.c.seq)
            with self._read() as conn:
                rows = conn.execute(query.limit(page)).all()
                if rows:
                    first, last = rows[0].seq, rows[-1].seq
                    labelled = sa.select(o.c.batch_seq, o.c.idx, o.c.outcome).where(
                        o.c.batch_seq.between(first, last)
                    )
                    outcomes: dict[int, dict[int, Any]] = {}
                    for seq, idx, outcome in conn.execute(labelled):
                        outcomes.setdefault(seq, {})[idx] = outcome
            if not rows:
                return
            for row in rows:
                yield _window_batch(row, outcomes.get(row.seq, {}), low, high)
            after = rows[-1].seq
            if len(rows) < page:
                return
            per_batch = max(1, sum(int(r.n) for r in rows) // len(rows))
            page = max(1, min(4096, page_rows // per_batch))

    def count_window(self, model: str, start: datetime, end: datetime) -> int:
        """How many of ``model``'s predictions were logged in ``[start, end)`` (only the batches
        straddling an edge are opened)."""
        start, end = _aware(start), _aware(end)
        b = mon_prediction_batches
        window = sa.and_(_overlapping(start, end), b.c.model_name == model)
        inside = sa.and_(b.c.first_at >= start, b.c.last_at < end)
        low, high = _us(start), _us(end)
        with self._read() as conn:
            whole = conn.execute(
                sa.select(sa.func.coalesce(sa.func.sum(b.c.n), 0)).where(window, inside)
            ).scalar_one()
            edges = conn.execute(sa.select(b.c.times).where(window, sa.not_(inside))).scalars()
            partial = sum(sum(1 for t in orjson.loads(times) if low <= t < high) for times in edges)
        return int(whole) + partial

    def attach_outcomes(
        self,
        model: str | None,
        items: list[dict[str, Any]],
        allowed: Callable[[str], bool] | None = None,
        *,
        keyed: Callable[[str], str] | None = None,
        signature_of: Callable[[str, int], Mapping[str, Any] | None] | None = None,
    ) -> list[int]:
        """Attach outcomes; each item names ``prediction_id`` or ``patient`` + a time window.

        Returns the number of predictions each item labelled (0 means nothing matched yet).
        An outcome attached again replaces the earlier one. With ``allowed``, a prediction of a
        model it refuses is not touched and counts as unmatched (the same answer as an unknown
        id: a caller learns nothing of other models' predictions). ``keyed`` maps a caller's own
        request id to the keyed form the log stores it under (``stored_request_id``).

        With ``signature_of`` (model, version -> the version's stored signature), each outcome
        is checked against the version of every prediction it matched (``outcome_problem``):
        one that is not a class of a classifier, or not a number for a regressor, refuses the
        whole call (``InvalidRequestError`` naming the item indices; nothing is attached). An
        item that matches nothing is never refused: there is no model to check it against.
        """
        now = datetime.now(UTC)
        counts = []
        seen: dict[int, tuple[str, int, list[str]]] = {}  # seq -> (model, version, ids), read once
        versions: dict[int, tuple[str, int]] = {}  # seq -> (model, version) of matched rows
        checked: dict[tuple[str, int, str], tuple[str, str] | None] = {}  # memo: -> (rule, why)
        problems: list[dict[str, Any]] = []
        refused = 0
        with self._write() as conn:
            for position, item in enumerate(items):
                if item.get("prediction_id"):
                    found = self._rows_by_id(conn, model, str(item["prediction_id"]), seen)
                    if not found and keyed is not None:
                        rid, _, index = str(item["prediction_id"]).rpartition("-")
                        if rid:
                            stored = f"{keyed(rid)}-{index}"
                            found = self._rows_by_id(conn, model, stored, seen)
                    hits = [h for h in found if allowed is None or allowed(seen[h[0]][0])]
                    versions.update((seq, seen[seq][:2]) for seq, _ in hits)
                else:
                    hits = self._rows_by_patient(conn, item, versions)
                if hits and signature_of is not None:
                    why = _first_problem(hits, versions, item["outcome"], signature_of, checked)
                    if why is not None:
                        refused += 1
                        if len(problems) < MAX_OUTCOME_PROBLEMS:
                            problems.append(
                                {
                                    "index": position,
                                    "field": f"outcomes[{position}].outcome",
                                    "rule": why[0],
                                    "message": why[1],
                                }
                            )
                if hits and not refused:
                    keys = sa.tuple_(mon_outcomes.c.batch_seq, mon_outcomes.c.idx)
                    for at in range(0, len(hits), 400):  # under SQLite's bound on parameters
                        chunk = hits[at : at + 400]
                        conn.execute(mon_outcomes.delete().where(keys.in_(chunk)))
                    outcome = orjson.dumps(item["outcome"]).decode()
                    conn.execute(
                        mon_outcomes.insert(),
                        [
                            {"batch_seq": s, "idx": i, "outcome": outcome, "outcome_at": now}
                            for s, i in hits
                        ],
                    )
                counts.append(len(hits))
            if refused:  # raised inside the transaction: nothing of the call is attached
                first = problems[0]
                more = f" (and {refused - 1} more)" if refused > 1 else ""
                raise InvalidRequestError(
                    f"{first['field']}: {first['message']}{more}; nothing was attached",
                    details=problems,
                )
        return counts

    def _rows_by_id(
        self,
        conn: Connection,
        model: str | None,
        prediction_id: str,
        seen: dict[int, tuple[str, int, list[str]]],
    ) -> list[tuple[int, int]]:
        request_id, _, index = prediction_id.rpartition("-")
        if not request_id or not index.isdigit():
            return []
        b = mon_prediction_batches
        seqs = set(
            conn.execute(
                sa.select(mon_prediction_ids.c.batch_seq).where(
                    mon_prediction_ids.c.request_id == request_id[:96]
                )
            ).scalars()
        )
        made_us = request_id_time_us(request_id)
        if made_us is not None:  # the batches that can hold it: logged up to 15 minutes later
            made = from_us(made_us + OWN_ID_LAG_US[0])
            late = from_us(made_us + OWN_ID_LAG_US[1])
            seqs.update(conn.execute(sa.select(b.c.seq).where(_overlapping(made, late))).scalars())
        missing = [s for s in seqs if s not in seen]
        if missing:
            query = sa.select(b.c.seq, b.c.model_name, b.c.version, b.c.ids).where(
                b.c.seq.in_(missing)
            )
            for seq, name, version, ids in conn.execute(query):
                seen[seq] = (name, int(version), orjson.loads(ids))
        hits: list[tuple[int, int]] = []
        for seq in sorted(seqs):
            name, _, ids = seen.get(seq, ("", 0, []))
            if model is None or name == model:
                hits.extend((seq, i) for i, x in enumerate(ids) if x == prediction_id)
        return hits

    def _rows_by_patient(
        self,
        conn: Connection,
        item: dict[str, Any],
        versions: dict[int, tuple[str, int]],
    ) -> list[tuple[int, int]]:
        start, end = _aware(item["start"]), _aware(item["end"])
        b = mon_prediction_batches
        query = sa.select(b.c.seq, b.c.version, b.c.patients, b.c.times).where(
            _overlapping(start, end), b.c.model_name == item["model"], b.c.patients.is_not(None)
        )
        low, high = _us(start), _us(end)
        hits = []
        for seq, version, patients, times in conn.execute(query):
            versions[seq] = (item["model"], int(version))
            for i, (patient, t) in enumerate(
                zip(orjson.loads(patients), orjson.loads(times), strict=True)
            ):
                if patient == item["patient"] and low <= t < high:
                    hits.append((seq, i))
        return hits

    # -- retention --------------------------------------------------------------------------
    def purge_before(self, model: str, cutoff: datetime, *, actor: str, why: str = "") -> Purged:
        """Delete ``model``'s prediction-log rows whose newest prediction is older than
        ``cutoff``, with their by-id index rows and outcomes, and the audit record, in one
        transaction. Nothing to purge writes nothing (no audit entry per idle schedule tick).

        Rows are packed (one row holds a writer batch): a row goes only when its ``last_at`` is
        before the cutoff, so predictions up to ``PACKED_SPAN_S`` newer than the cutoff may
        stay until the next purge.
        """
        cutoff = _aware(cutoff)
        b, o, ids_t = mon_prediction_batches, mon_outcomes, mon_prediction_ids
        expired = sa.and_(b.c.model_name == model, b.c.last_at < cutoff)
        purged = Purged(model=model, cutoff=cutoff)
        with self._write() as conn:
            found = conn.execute(sa.select(b.c.seq, b.c.n).where(expired)).all()
            if not found:
                return purged
            seqs = [int(seq) for seq, _ in found]
            for at in range(0, len(seqs), 400):  # under SQLite's bound on parameters
                chunk = seqs[at : at + 400]
                purged.outcomes += conn.execute(o.delete().where(o.c.batch_seq.in_(chunk))).rowcount
                conn.execute(ids_t.delete().where(ids_t.c.batch_seq.in_(chunk)))
                conn.execute(b.delete().where(b.c.seq.in_(chunk)))
            purged.rows = len(seqs)
            purged.predictions = sum(int(n) for _, n in found)
            record_change(conn, RETENTION_PURGE, model, actor=actor, reason=purged.reason(why))
        return purged

    # -- runs -------------------------------------------------------------------------------
    def add_run(self, model: str, start: datetime, end: datetime, result: dict[str, Any]) -> int:
        with self._write() as conn:
            inserted = conn.execute(
                mon_runs.insert().values(
                    model_name=model,
                    window_start=start,
                    window_end=end,
                    result=result,
                    created_at=datetime.now(UTC),
                )
            )
            return inserted_id(inserted)

    def runs(self, model: str, limit: int = 20) -> list[dict[str, Any]]:
        t = mon_runs
        query = sa.select(t).where(t.c.model_name == model).order_by(t.c.id.desc()).limit(limit)
        with self._read() as conn:
            rows = conn.execute(query).mappings().all()
        return [
            {
                "id": r["id"],
                "window_start": _utc(r["window_start"]),
                "window_end": _utc(r["window_end"]),
                "created_at": _utc(r["created_at"]),
                **dict(r["result"]),
            }
            for r in rows
        ]

    # -- alert rules and alerts -------------------------------------------------------------
    def add_rule(
        self,
        model: str,
        metric: str,
        op: str,
        threshold: float,
        *,
        min_n: int = 30,
        consecutive: int = 1,
        actor: str = "unknown",
    ) -> AlertRule:
        if op not in RULE_OPS:
            raise InvalidRequestError(f"rule operator must be one of {', '.join(RULE_OPS)}")
        rule_metric_problem(metric)
        if min_n < 0 or consecutive < 1:
            raise InvalidRequestError("min_n must be >= 0 and consecutive >= 1")
        with self._write() as conn:
            inserted = conn.execute(
                mon_rules.insert().values(
                    model_name=model,
                    metric=metric,
                    op=op,
                    threshold=float(threshold),
                    min_n=int(min_n),
                    consecutive=int(consecutive),
                    streak=0,
                    enabled=True,
                    created_by=actor,
                    created_at=datetime.now(UTC),
                )
            )
            rule_id = inserted_id(inserted)
            reason = f"rule {rule_id}: {metric} {op} {float(threshold):g}"
            record_change(conn, "monitoring.rule_added", model, actor=actor, reason=reason)
        return AlertRule(rule_id, model, metric, op, float(threshold), min_n, consecutive, 0, True)

    def rules(self, model: str) -> list[AlertRule]:
        t = mon_rules
        with self._read() as conn:
            rows = conn.execute(
                sa.select(t).where(t.c.model_name == model).order_by(t.c.id)
            ).mappings()
            return [
                AlertRule(
                    r["id"],
                    r["model_name"],
                    r["metric"],
                    r["op"],
                    r["threshold"],
                    r["min_n"],
                    r["consecutive"],
                    r["streak"],
                    r["enabled"],
                )
                for r in rows
            ]

    def set_streak(self, conn: Connection, rule_id: int, streak: int) -> None:
        conn.execute(mon_rules.update().where(mon_rules.c.id == rule_id).values(streak=streak))

    def open_alert(self, conn: Connection, rule_id: int) -> RowMapping | None:
        t = mon_alerts
        return (
            conn.execute(
                sa.select(t).where(t.c.rule_id == rule_id, t.c.resolved_at.is_(None)).limit(1)
            )
            .mappings()
            .first()
        )

    def alerts(self, model: str | None = None, *, open_only: bool = False) -> list[dict[str, Any]]:
        t = mon_alerts
        query = sa.select(t).order_by(t.c.id)
        if model is not None:
            query = query.where(t.c.model_name == model)
        if open_only:
            query = query.where(t.c.resolved_at.is_(None))
        with self._read() as conn:
            rows = conn.execute(query).mappings().all()
        return [_alert(r) for r in rows]

    def set_delivery(self, alert_id: int, delivery: str, attempts: int) -> None:
        t = mon_alerts
        with self._write() as conn:
            conn.execute(
                t.update().where(t.c.id == alert_id).values(delivery=delivery, attempts=attempts)
            )

    def acknowledge(
        self,
        alert_id: int,
        actor: str,
        note: str | None = None,
        *,
        key_id: str | None = None,
        request_id: str | None = None,
        audit: AuditLog | bool = True,
    ) -> dict[str, Any]:
        """Acknowledge an alert; with ``audit`` (the caller's trail, sealed with its keys, or
        ``True`` for an unkeyed one) the trail gets an ``alert_acknowledge`` entry in the same
        transaction (who, which alert and model; the note is not copied:
        free text may hold PHI)."""

        t = mon_alerts
        with self._write() as conn:
            row = conn.execute(sa.select(t).where(t.c.id == alert_id)).mappings().first()
            if row is None:
                raise NotFoundError(f"no alert {alert_id}")
            conn.execute(
                t.update()
                .where(t.c.id == alert_id)
                .values(
                    state="acknowledged" if row["resolved_at"] is None else row["state"],
                    acknowledged_by=actor,
                    acknowledged_at=datetime.now(UTC),
                    note=note,
                )
            )
            updated = conn.execute(sa.select(t).where(t.c.id == alert_id)).mappings().one()
            if audit:
                entry = AuditEntry(
                    actor=actor,
                    key_id=key_id,
                    action="alert_acknowledge",
                    model=str(row["model_name"]),
                    outcome=200,
                    request_id=request_id,
                    detail=f"alert {alert_id} ({row['metric']}) {updated['state']}"
                    + (" with a note" if note else ""),
                )
                trail = audit if isinstance(audit, AuditLog) else AuditLog(self.engine)
                trail.append_in(conn, [entry])
        return _alert(updated)


_SPAN = timedelta(seconds=PACKED_SPAN_S)


def _us(value: datetime) -> int:
    return (value - EPOCH) // timedelta(microseconds=1)


def _overlapping(start: datetime, end: datetime) -> sa.ColumnElement[bool]:
    """Batches that may hold a row logged in ``[start, end)``: an index range on ``first_at``,
    since no batch spans more than ``PACKED_SPAN_S``."""
    b = mon_prediction_batches
    return sa.and_(b.c.first_at >= start - _SPAN, b.c.first_at < end, b.c.last_at >= start)


def _unpack(
    batch: RowMapping, outcomes: dict[tuple[int, int], Any], low: int, high: int
) -> Iterator[LoggedPrediction]:
    """The batch's rows logged in ``[low, high)`` microseconds."""
    seq, n = batch["seq"], batch["n"]
    times = orjson.loads(batch["times"])
    ids = orjson.loads(batch["ids"])
    blob = batch["inputs_npy"]
    inputs = npy_rows(blob) if blob is not None else orjson.loads(batch["inputs"])
    outputs = orjson.loads(batch["outputs"])
    latency = orjson.loads(batch["latency_ms"])
    patients = orjson.loads(batch["patients"]) if batch["patients"] else [None] * n
    sites = orjson.loads(batch["sites"]) if batch["sites"] else [None] * n
    for i in range(n):
        if not low <= times[i] < high:
            continue
        outcome = outcomes.get((seq, i))
        yield LoggedPrediction(
            id=ids[i],
            model_name=batch["model_name"],
            version=batch["version"],
            at=from_us(times[i]),
            patient=patients[i],
            site=sites[i],
            inputs=inputs[i],
            outputs={key: column[i] for key, column in outputs.items()},
            outcome=orjson.loads(outcome.outcome) if outcome is not None else None,
            outcome_at=_utc(outcome.outcome_at) if outcome is not None else None,
            latency_ms=latency[i],
        )


def npy_matrix(blob: bytes) -> np.ndarray:
    """A matrix stored as ``.npy`` bytes, read in place (no copy, no decimal text)."""
    buffer = io.BytesIO(blob)
    version = np.lib.format.read_magic(buffer)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(buffer)
    else:
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(buffer)
    if dtype.hasobject:
        raise ValueError("an object matrix is not a logged input matrix")
    count = int(np.prod(shape)) if shape else 1
    flat = np.frombuffer(blob, dtype=dtype, count=count, offset=buffer.tell())
    return flat.reshape(shape, order="F" if fortran else "C")


def _window_batch(row: Any, outcomes: dict[int, Any], low: int, high: int) -> WindowBatch:
    n = int(row.n)
    keep = None
    if row.times is not None:  # the batch straddles an edge of the window
        times = np.asarray(orjson.loads(row.times), dtype=np.int64)
        keep = (times >= low) & (times < high)
    blob = row.inputs_npy
    inputs: np.ndarray | list[list[Any]] = (
        npy_matrix(blob) if blob is not None else orjson.loads(row.inputs)
    )
    return WindowBatch(
        seq=int(row.seq),
        version=int(row.version),
        n=n,
        keep=keep,
        inputs=inputs,
        outputs=orjson.loads(row.outputs),
        missing=orjson.loads(row.missing) if row.missing else [],
        outcomes={
            idx: orjson.loads(text) for idx, text in outcomes.items() if keep is None or keep[idx]
        },
        sites_json=row.sites,
    )


def _alert(r: RowMapping) -> dict[str, Any]:
    return {
        "id": r["id"],
        "rule_id": r["rule_id"],
        "model": r["model_name"],
        "metric": r["metric"],
        "value": r["value"],
        "threshold": r["threshold"],
        "n": r["n"],
        "run_id": r["run_id"],
        "state": r["state"],
        "delivery": r["delivery"],
        "attempts": r["attempts"],
        "fired_at": _utc(r["fired_at"]),
        "resolved_at": _utc(r["resolved_at"]),
        "acknowledged_by": r["acknowledged_by"],
        "acknowledged_at": _utc(r["acknowledged_at"]),
        "note": r["note"],
    }


def rule_metric_problem(metric: str) -> None:
    """Refuse a rule metric that no run computes (``InvalidRequestError`` naming it and the known
    ones): such a rule would never fire, which looks the same as a healthy model."""
    kind, sep, feature = metric.partition(":")
    if sep and kind in FEATURE_METRICS and feature:
        return
    if not sep and metric in SUMMARY_METRICS + PERFORMANCE_METRICS:
        return
    shown = metric if len(metric) <= 80 else metric[:80] + "..."
    known = ", ".join(SUMMARY_METRICS + PERFORMANCE_METRICS)
    kinds = ", ".join(f"{k}:FEATURE" for k in FEATURE_METRICS)
    raise InvalidRequestError(
        f"unknown rule metric {shown!r}: use one of {known}, or per feature (or prediction "
        f"column such as p:CLASS) {kinds}",
        details=[{"field": "metric", "rule": "allowed_values", "message": "unknown metric"}],
    )


def inserted_id(result: Any) -> int:
    key = result.inserted_primary_key
    assert key is not None
    return int(key[0])


def _first_problem(
    hits: list[tuple[int, int]],
    versions: dict[int, tuple[str, int]],
    outcome: Any,
    signature_of: Callable[[str, int], Mapping[str, Any] | None],
    memo: dict[tuple[str, int, str], tuple[str, str] | None],
) -> tuple[str, str] | None:
    """The first (rule, message) by which ``outcome`` does not fit a matched version."""
    token = orjson.dumps(outcome).decode()
    for name, version in sorted({versions[seq] for seq, _ in hits}):
        key = (name, version, token)
        if key not in memo:
            why = outcome_problem(signature_of(name, version), outcome)
            memo[key] = None if why is None else (why[0], f"{why[1]} of {name} v{version}")
        if memo[key] is not None:
            return memo[key]
    return None


def outcome_problem(signature: Mapping[str, Any] | None, outcome: Any) -> tuple[str, str] | None:
    """Why ``outcome`` cannot be observed for a version with ``signature``: ``(rule, message)``,
    or ``None`` when it can. The message never repeats the outcome (a caller's free text).

    A classifier's outcome is one of its classes (as stored or as text); a binary classifier
    also takes 0/1 or false/true for its negative/positive class, as live performance reads
    them. A regressor's is a number. ``null`` (no outcome) fits any model, and a version with
    neither a task nor classes (a foundation model, an old registration) is not checked.
    """
    if outcome is None or not signature:
        return None
    task = signature.get("task")
    labels = list(signature.get("class_labels") or [])
    is_number = isinstance(outcome, int | float) and not isinstance(outcome, bool)
    if task == "regression":
        return None if is_number else ("type", "the outcome must be a number for the regressor")
    if not labels:
        return None
    if isinstance(outcome, str):
        fits = outcome in {str(label) for label in labels}
    else:
        numeric = [x for x in labels if isinstance(x, int | float) and not isinstance(x, bool)]
        fits = (is_number and outcome in numeric) or (len(labels) == 2 and outcome in (0, 1))
    if fits:
        return None
    shown = [str(label)[:_SHOWN_CLASS_CHARS] for label in labels[:_SHOWN_CLASSES]]
    more = f" and {len(labels) - _SHOWN_CLASSES} more" if len(labels) > _SHOWN_CLASSES else ""
    binary = " (or 0/1, false/true for the negative/positive class)" if len(labels) == 2 else ""
    return (
        "allowed_values",
        f"the outcome must be one of the classes {', '.join(shown)}{more}{binary}",
    )
