"""What the language-model API counts in ``/metrics``: tokens, time to first token, tokens per
second, time queued for a generation thread, calls by outcome. Labelled by model and version
(registered names, never the caller's text) and, for tokens, the key id (an id, not a secret),
so a tenant's key sees only its own models' series (``/metrics`` filters by the model label)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

TOKENS = Counter(
    "medserve_llm_tokens_total",
    "Tokens of language-model calls, by model, version, key id and kind (prompt, completion).",
    ["model", "version", "key_id", "kind"],
)
CALLS = Counter(
    "medserve_llm_calls_total",
    "Language-model calls, by model, version, endpoint and finish reason (stop, length, "
    "disconnected, error).",
    ["model", "version", "endpoint", "finish_reason"],
)
REFUSED = Counter(
    "medserve_llm_refused_total",
    "Language-model calls refused before the model ran, by code (phi_blocked, "
    "phi_detection_unavailable, budget_exceeded, request_over_limit, ...).",
    ["code"],
)
PHI_FOUND = Counter(
    "medserve_llm_phi_found_total",
    "Identifier categories found in prompts and answers, by model, where and category.",
    ["model", "where", "category"],
)
TIME_TO_FIRST_TOKEN = Histogram(
    "medserve_llm_time_to_first_token_seconds",
    "From the call's admission to its first generated text, by model and version.",
    ["model", "version"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32),
)
TOKENS_PER_SECOND = Histogram(
    "medserve_llm_tokens_per_second",
    "Completion tokens per second of generation (after the first token), by model and version.",
    ["model", "version"],
    buckets=(1, 2, 5, 10, 20, 40, 80, 160, 320),
)
QUEUE_SECONDS = Histogram(
    "medserve_llm_queue_seconds",
    "Time a call waited for a generation thread, by model and version.",
    ["model", "version"],
    buckets=(0.001, 0.01, 0.05, 0.1, 0.5, 1, 5, 15, 60),
)
