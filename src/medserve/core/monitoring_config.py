"""Monitoring settings: process-wide knobs (env ``MEDSERVE_MONITOR_*``) and per-model config.

Per-model configuration (thresholds, outcome horizon, positive class, subgroups, webhook) is
stored in the registry database so every worker and the CLI see the same values.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class MonitoringSettings(BaseSettings):
    # validate_by_name: `audit_failure=` in code, `MEDSERVE_AUDIT_FAILURE` in the environment.
    model_config = SettingsConfigDict(
        env_prefix="MEDSERVE_MONITOR_", extra="ignore", validate_by_name=True
    )

    log_predictions: bool = Field(
        default=True, description="Record every prediction (de-identified) in the prediction log."
    )
    queue_size: int = Field(
        default=50_000,
        description=(
            "Bound of the in-process log queue, in rows (a 100-row request counts 100): what a "
            "worker may hold in memory before the audit_failure policy applies."
        ),
    )
    audit_failure: Literal["fail_closed", "fail_open"] = Field(
        default="fail_closed",
        validation_alias="MEDSERVE_AUDIT_FAILURE",
        description=(
            "Env `MEDSERVE_AUDIT_FAILURE`. What becomes of a prediction the log cannot take (its "
            "queue is full), decided at once (never by waiting on the event loop): "
            "`fail_closed` refuses the request with a 503 (`prediction_log_full`), so no "
            "prediction is answered unlogged; `fail_open` answers it and drops its log rows, "
            "each counted in `medserve_monitor_log_dropped_total` and logged."
        ),
    )
    batch_rows: int = Field(default=5000, description="Most rows written in one transaction.")
    flush_interval_s: float = Field(
        default=1.0,
        description=(
            "Longest time an entry waits in memory before it is written (or until the queue is "
            "half full). Measured: waking the writer 20 times a second cost a third of the "
            "throughput on 2 cores (GIL handoffs with the event loop); once a second, 10%."
        ),
    )
    schedule_interval_s: float = Field(
        default=0.0,
        description="Run drift/performance monitoring inside the server every N seconds (0: off).",
    )
    window_s: float = Field(default=3600.0, description="Default monitoring window length.")
    sites: list[str] = Field(
        default_factory=list,
        description=(
            "The registered site codes (env `MEDSERVE_MONITOR_SITES`, a JSON list): an "
            "`X-Site` among them is logged as sent; any other value is logged only as a keyed "
            "pseudonym, since a caller may send anything there (an address was seen)."
        ),
    )


class ModelMonitoringConfig(BaseModel):
    """Per-model monitoring configuration (``medserve monitor config NAME --set key=value``)."""

    psi_warn: float = 0.1
    psi_alert: float = 0.25
    ks_alpha: float = 0.01
    outcome_horizon_s: float = Field(
        default=0.0,
        description="Time after a prediction before its outcome is considered known (matured).",
    )
    positive_class: str | None = Field(
        default=None, description="Class whose probability is the risk score (binary: default 2nd)."
    )
    threshold: float = Field(default=0.5, description="Decision threshold on the risk score.")
    subgroups: list[str] = Field(
        default_factory=lambda: ["site"],
        description="Subgroup keys for live performance: `site` or an input feature name.",
    )
    webhook_url: str | None = None
    min_window_n: int = Field(default=30, description="Fewest predictions for a drift verdict.")
    log_text: bool = Field(
        default=False,
        description=(
            "Keep free-text inputs in the prediction log, de-identified (Safe Harbor patterns). "
            "Off by default: only a keyed hash and the length are kept."
        ),
    )
    retention_days: int | None = Field(
        default=None,
        description=(
            "Keep this model's prediction log (inputs, outputs, outcomes) this many days, then "
            "purge it on the monitoring schedule or with `medserve monitor purge`. Unset: kept. "
            "The log is packed: a stored row goes when its newest prediction is older than the "
            "cutoff, so it may hold predictions up to its span (60 s) older than that."
        ),
    )

    @field_validator("retention_days", mode="before")
    @classmethod
    def _whole_days(cls, value: object) -> object:
        """A whole number of days, 1 to 36500: ``--set retention_days=1.5`` or ``0`` is refused
        here rather than rounded or read as "purge everything"."""
        if value is None:
            return None
        if isinstance(value, str) and value.strip().lstrip("+").isdigit():
            value = int(value.strip())
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 36500:
            raise ValueError("retention_days must be a whole number of days from 1 to 36500")
        return value
