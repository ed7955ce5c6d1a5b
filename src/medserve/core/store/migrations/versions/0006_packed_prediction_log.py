"""Monitoring: the prediction log packed one row per writer batch (outcomes in their own table).

Rows already logged move over as one-row batches (their ids into ``mon_prediction_ids``, since
ids written before this revision need not carry their time), with their outcomes.

Revision ID: 0006
Revises: 0004
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0004"
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)  # times are microseconds since then

_old = sa.table(
    "mon_predictions",
    sa.column("seq", sa.Integer),
    sa.column("id", sa.String),
    sa.column("model_name", sa.String),
    sa.column("version", sa.Integer),
    sa.column("at", _TS),
    sa.column("patient", sa.String),
    sa.column("site", sa.String),
    sa.column("inputs", sa.Text),
    sa.column("outputs", sa.Text),
    sa.column("latency_ms", sa.Float),
    sa.column("outcome", sa.Text),
    sa.column("outcome_at", _TS),
)
_batches = sa.table(
    "mon_prediction_batches",
    sa.column("seq", sa.Integer),
    sa.column("model_name", sa.String),
    sa.column("version", sa.Integer),
    sa.column("first_at", _TS),
    sa.column("last_at", _TS),
    sa.column("n", sa.Integer),
    sa.column("ids", sa.Text),
    sa.column("times", sa.Text),
    sa.column("patients", sa.Text),
    sa.column("sites", sa.Text),
    sa.column("inputs", sa.Text),
    sa.column("outputs", sa.Text),
    sa.column("latency_ms", sa.Text),
)
_ids = sa.table(
    "mon_prediction_ids", sa.column("request_id", sa.String), sa.column("batch_seq", sa.Integer)
)
_outcomes = sa.table(
    "mon_outcomes",
    sa.column("batch_seq", sa.Integer),
    sa.column("idx", sa.Integer),
    sa.column("outcome", sa.Text),
    sa.column("outcome_at", _TS),
)


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


def upgrade() -> None:
    op.create_table(
        "mon_prediction_batches",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("model_name", sa.String(128), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("first_at", _TS, nullable=False),
        sa.Column("last_at", _TS, nullable=False),
        sa.Column("n", sa.Integer, nullable=False),
        sa.Column("ids", sa.Text, nullable=False),
        sa.Column("times", sa.Text, nullable=False),
        sa.Column("patients", sa.Text, nullable=True),
        sa.Column("sites", sa.Text, nullable=True),
        sa.Column("inputs", sa.Text, nullable=False),
        sa.Column("outputs", sa.Text, nullable=False),
        sa.Column("latency_ms", sa.Text, nullable=False),
    )
    op.create_index(
        "ix_mon_prediction_batches_model_first",
        "mon_prediction_batches",
        ["model_name", "first_at"],
    )
    op.create_index("ix_mon_prediction_batches_first", "mon_prediction_batches", ["first_at"])
    op.create_table(
        "mon_prediction_ids",
        sa.Column("request_id", sa.String(96), nullable=False),
        sa.Column("batch_seq", sa.Integer, nullable=False),
    )
    op.create_index("ix_mon_prediction_ids_request_id", "mon_prediction_ids", ["request_id"])
    op.create_table(
        "mon_outcomes",
        sa.Column("batch_seq", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("idx", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("outcome", sa.Text, nullable=False),
        sa.Column("outcome_at", _TS, nullable=False),
    )
    conn = op.get_bind()
    for row in conn.execute(sa.select(_old).order_by(_old.c.seq)).mappings():
        at = _utc(row["at"])
        seq = conn.execute(
            _batches.insert()
            .values(
                model_name=row["model_name"],
                version=row["version"],
                first_at=at,
                last_at=at,
                n=1,
                ids=_json([row["id"]]),
                times=_json([(at - _EPOCH) // timedelta(microseconds=1)]),
                patients=_json([row["patient"]]) if row["patient"] else None,
                sites=_json([row["site"]]) if row["site"] else None,
                inputs=f"[{row['inputs']}]",
                outputs=_json({k: [v] for k, v in orjson.loads(row["outputs"]).items()}),
                latency_ms=_json([row["latency_ms"]]),
            )
            .returning(_batches.c.seq)
        ).scalar_one()
        request_id = str(row["id"]).rsplit("-", 1)[0]
        conn.execute(_ids.insert().values(request_id=request_id, batch_seq=seq))
        if row["outcome"] is not None:
            conn.execute(
                _outcomes.insert().values(
                    batch_seq=seq,
                    idx=0,
                    outcome=row["outcome"],
                    outcome_at=row["outcome_at"] or at,
                )
            )
    op.drop_table("mon_predictions")


def downgrade() -> None:
    op.create_table(
        "mon_predictions",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(96), nullable=False),
        sa.Column("model_name", sa.String(128), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("at", _TS, nullable=False),
        sa.Column("patient", sa.String(64), nullable=True),
        sa.Column("site", sa.String(128), nullable=True),
        sa.Column("inputs", sa.Text, nullable=False),
        sa.Column("outputs", sa.Text, nullable=False),
        sa.Column("latency_ms", sa.Float, nullable=False),
        sa.Column("outcome", sa.Text, nullable=True),
        sa.Column("outcome_at", _TS, nullable=True),
    )
    op.create_index("ix_mon_predictions_id", "mon_predictions", ["id"])
    op.create_index("ix_mon_predictions_model_at", "mon_predictions", ["model_name", "at"])
    op.create_index("ix_mon_predictions_patient", "mon_predictions", ["patient", "model_name"])
    conn = op.get_bind()
    outcomes = {
        (r["batch_seq"], r["idx"]): r for r in conn.execute(sa.select(_outcomes)).mappings()
    }
    for batch in conn.execute(sa.select(_batches).order_by(_batches.c.seq)).mappings():
        n = int(batch["n"])
        patients = orjson.loads(batch["patients"]) if batch["patients"] else [None] * n
        sites = orjson.loads(batch["sites"]) if batch["sites"] else [None] * n
        outputs = orjson.loads(batch["outputs"])
        for i, (pid, t, row_inputs, latency) in enumerate(
            zip(
                orjson.loads(batch["ids"]),
                orjson.loads(batch["times"]),
                orjson.loads(batch["inputs"]),
                orjson.loads(batch["latency_ms"]),
                strict=True,
            )
        ):
            outcome = outcomes.get((batch["seq"], i))
            conn.execute(
                _old.insert().values(
                    id=pid,
                    model_name=batch["model_name"],
                    version=batch["version"],
                    at=_EPOCH + timedelta(microseconds=t),
                    patient=patients[i],
                    site=sites[i],
                    inputs=_json(row_inputs),
                    outputs=_json({k: v[i] for k, v in outputs.items()}),
                    latency_ms=latency,
                    outcome=outcome["outcome"] if outcome else None,
                    outcome_at=outcome["outcome_at"] if outcome else None,
                )
            )
    for table in ("mon_outcomes", "mon_prediction_ids", "mon_prediction_batches"):
        op.drop_table(table)
