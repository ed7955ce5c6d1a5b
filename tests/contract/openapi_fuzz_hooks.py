"""schemathesis hooks for the unauthenticated fuzz run (see test_openapi_fuzz.py)."""

from __future__ import annotations

from typing import Any

import schemathesis

OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready"})


@schemathesis.check
def refused_without_credentials(ctx: Any, response: Any, case: Any) -> bool | None:
    """Without a credential every operation but the health probes answers 401 (never 5xx)."""
    if case.path in OPEN_PATHS:
        return None
    headers = case.headers or {}
    preflight = "Origin" in headers and "Access-Control-Request-Method" in headers
    if case.method.upper() == "OPTIONS" and case.path.startswith("/cds-services") and preflight:
        # a CORS preflight carries no credential by design: answered with the allow headers
        if response.status_code != 200:
            raise AssertionError(f"CORS preflight on {case.path} answered {response.status_code}")
        if response.headers.get("access-control-allow-origin", [""])[0] != "*":
            raise AssertionError("a CORS preflight must carry Access-Control-Allow-Origin")
        return None
    if response.status_code != 401:
        raise AssertionError(
            f"{case.method} {case.path} answered {response.status_code} without credentials"
        )
    if not response.headers.get("www-authenticate", [""])[0].startswith("Bearer"):
        raise AssertionError("a 401 must carry WWW-Authenticate: Bearer")
    return None
