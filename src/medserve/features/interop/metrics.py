"""Prometheus counters of the CDS Hooks service (multiprocess-safe like the other counters)."""

from __future__ import annotations

from prometheus_client import Counter

CDS_CARDS = Counter(
    "medserve_cds_cards_total",
    "CDS cards returned, by model, version and indicator.",
    ["model", "version", "indicator"],
)
CDS_FEEDBACK = Counter(
    "medserve_cds_feedback_total",
    "CDS card feedback received, by model, version and outcome (accepted/overridden).",
    ["model", "version", "outcome"],
)
CDS_PRECONDITION_FAILED = Counter(
    "medserve_cds_prefetch_missing_total",
    "CDS calls answered 412 because prefetch data was absent and could not be fetched.",
    ["service"],
)
