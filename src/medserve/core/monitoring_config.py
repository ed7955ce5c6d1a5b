"""Monitoring settings: process-wide knobs (env ``MEDSERVE_MONITOR_*``) and per-model config.

Per-model configuration (thresholds, outcome horizon, positive class, subgroups, webhook) is
stored in the registry database so every worker and the CLI see the same values.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field
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
