"""HTTP extension: privacy (a patient's erasure, ``POST /v1/patients/erase``, admins only).

The identifier travels in the body, never in the path or a query string: the security
middleware audits the method and the route's path, and the answer carries counts only, so the
identifier is in no log, audit entry or response. The erasure's own audit entry
(``privacy.patient_erased``, through the outbox, in the erasure's transaction) names no
identifier either (``medserve.core.erasure``).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Request
from pydantic import BaseModel, ConfigDict, Field

from medserve.core.erasure import MAX_PATIENT_ID, MAX_REASON, erase_patient
from medserve.core.journal import scrubber
from medserve.core.phi import load_or_create_salt
from medserve.core.store.unit_of_work import engine_of
from medserve.serving.extension import ServingExtension
from medserve.serving.extensions.monitoring import PREDICTION_LOG
from medserve.serving.extensions.security import AUDIT_LOG
from medserve.serving.resources import principal_of, resources_of

router = APIRouter(tags=["privacy"])

ERASE_ACTION = "erase"  # the permission (features/security/permissions.py: admin only)
ERASE_EXAMPLE = {"patient_id": "MRN-12345", "reason": "erasure request 2026-117"}


class ErasureRequest(BaseModel):
    """Bounded: an unknown field, an empty or over-long value is a 400 naming the field."""

    model_config = ConfigDict(extra="forbid")

    patient_id: str = Field(
        min_length=1,
        max_length=MAX_PATIENT_ID,
        pattern=r"\S",
        description="The identifier the patient's predictions were sent with (X-Patient-ID, "
        "or the FHIR Patient id). Used to compute the pseudonym, never stored or echoed.",
    )
    reason: str | None = Field(
        default=None,
        max_length=MAX_REASON,
        description="Why (a ticket or request number). De-identified before it is audited.",
    )


@router.post("/v1/patients/erase", openapi_extra={"x-medserve-action": ERASE_ACTION})
def erase(
    request: Request, body: ErasureRequest = Body(examples=[ERASE_EXAMPLE])
) -> dict[str, Any]:
    """Erase one patient: their predictions, inputs and outcomes leave the prediction log, and
    their patient key is destroyed, so the audit trail (kept, still verifiable) can no longer be
    linked to them. Answers what was removed, as counts. Idempotent.

    Predictions this worker has accepted but not yet written are written first; another
    worker's (at most its flush interval old) may land after: repeat the call to be sure.
    """
    resources = resources_of(request)
    principal = principal_of(request)
    resources.guard.authorize(principal, ERASE_ACTION, None)
    prediction_log = resources.find(PREDICTION_LOG)
    if prediction_log is not None:
        prediction_log.flush()  # a plain def: FastAPI runs it in a worker thread
    trail = resources.find(AUDIT_LOG)
    if trail is not None:  # pending entries would give the patient a new key after erasure
        trail.flush()
    report = erase_patient(
        engine_of(resources.registry.store),
        salt=load_or_create_salt(resources.settings.home),
        patient_id=body.patient_id,
        actor=principal.subject,
        reason=body.reason,
        journals=scrubber(resources.settings.home),
    )
    return {"erased": True, **report.to_dict()}


class PrivacyExtension(ServingExtension):
    """A patient's erasure over HTTP (the CLI's is ``medserve erase``)."""

    name = "privacy"
    order = 60
    router = router


extension = PrivacyExtension()
