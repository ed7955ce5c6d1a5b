"""The FHIR media handler of the records predict endpoint (transport-free, like the modalities').

``POST /v1/models/{name}[/versions/{v}]/predict``

* ``Content-Type: application/fhir+json``: the body is a Bundle (Patient + Observations +
  Conditions); the version's FHIR feature map turns it into one record per patient. Problems
  come back as a 422 ``OperationOutcome`` naming each one.
* ``Accept: application/fhir+json`` or ``?format=fhir`` (with FHIR or JSON records in): the
  answer is a ``Bundle`` of ``RiskAssessment``, one per patient (per record). ``?explain=false``
  leaves out the rationale (computed from the top attributions otherwise).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import Any

import numpy as np
import orjson

from medserve.core.context import RequestContext
from medserve.core.errors import InvalidRequestError, MedserveError, UnsupportedMediaTypeError
from medserve.core.loaded_model import LoadedModel
from medserve.features.explain.service import service_for
from medserve.features.interop.fhir_input import (
    FhirInputError,
    PatientInput,
    Problem,
    bundle_to_records,
)
from medserve.features.interop.fhir_output import (
    collection,
    fhir_id_base,
    fhir_map,
    operating_threshold,
    outcome_for_error,
    positive_probability,
    risk_assessment,
)
from medserve.serving.data_plane import DataPlane
from medserve.serving.http_errors import status_for
from medserve.serving.media import FHIR_JSON, MediaAnswer, MediaHandler, MediaRequest
from medserve.serving.protocols import records

log = logging.getLogger(__name__)


async def rationales(
    plane: DataPlane, model: LoadedModel, rows: list[dict[str, Any]], target: str | None
) -> list[str | None]:
    """Top attributions in plain words, per row; none when the model cannot be explained."""
    try:
        X = records.parse_records_request(model, {"instances": rows})  # series models too
    except Exception as exc:  # an explanation must never cost the prediction
        log.warning("no rationale for %s v%s: %s", model.name, model.number, type(exc).__name__)
        return [None] * len(rows)
    return await matrix_rationales(plane, model, X, target)


async def matrix_rationales(
    plane: DataPlane, model: LoadedModel, X: np.ndarray, target: str | None
) -> list[str | None]:
    """:func:`rationales` of a matrix the model's validator already made (one per row)."""
    try:
        explained = await asyncio.to_thread(service_for(plane.manager).explain, model, X, target)
    except Exception as exc:  # an explanation must never cost the prediction
        log.warning("no rationale for %s v%s: %s", model.name, model.number, type(exc).__name__)
        return [None] * X.shape[0]
    target_name = f"the probability of {explained.get('target')}"
    return [
        "; ".join(part.replace(target_name, "the risk") for part in row.get("top") or []) or None
        for row in explained["explanations"]
    ]


async def _predict(
    plane: DataPlane, model: LoadedModel, rows: Any, context: RequestContext
) -> tuple[dict[str, Any], np.ndarray]:
    """The records prediction of ``model`` (the version this request resolved, whose FHIR map
    was used), and the validated matrix, so the rationales reuse it instead of validating the
    rows again. Through the one pipeline (``DataPlane.serve``), as the records API."""
    started = time.perf_counter()
    X = records.parse_records_request(model, {"instances": rows})
    outputs, _ = await plane.serve(model, X, context, "records", started)
    return records.build_records_response(model, outputs, context.request_id), X


async def fhir_handler(
    plane: DataPlane,
    name: str,
    ref: str | None,
    request: MediaRequest,
    context: RequestContext,
) -> MediaAnswer:
    raw = request.body
    fhir_in = request.content_type == FHIR_JSON
    fhir_out = request.wants_fhir
    patients: list[PatientInput] | None = None
    try:
        model = await plane.model(name, ref, context)  # a canary split follows the patient
        fmap = fhir_map(model)
        body = _decode(raw, fhir_in)
        if fhir_in:
            if fmap is None:
                raise UnsupportedMediaTypeError(
                    f"model {name!r} version {model.number} declares no FHIR feature map "
                    "(serving_config.fhir); send application/json records"
                )
            patients = bundle_to_records(body, fmap, model.signature)
            rows: Any = [p.record for p in patients]
            if len(patients) == 1 and context.patient_id is None:
                # the pseudonym for outcome joins: observers keep only its salted hash
                context = dataclasses.replace(context, patient_id=patients[0].log_reference)
            elif len(patients) > 1:
                # one patient per row: the prediction log keeps each row's own pseudonym
                context = dataclasses.replace(
                    context, patient_ids=tuple(p.log_reference for p in patients)
                )
        else:
            rows = body.get("instances") if isinstance(body, dict) else None
        response, X = await _predict(plane, model, rows, context)
        if not fhir_out:
            return (
                200,
                orjson.dumps(response, option=orjson.OPT_SERIALIZE_NUMPY),
                b"application/json",
            )
        if not model.is_classifier:
            raise UnsupportedMediaTypeError(
                "a FHIR RiskAssessment answer needs a classifier; ask for application/json"
            )
        explain = request.explain
        target = fmap.positive_class if fmap is not None else None
        reasons = (
            await matrix_rationales(plane, model, X, target) if explain else [None] * X.shape[0]
        )
        threshold = operating_threshold(model, fmap)
        fhir_id = fhir_id_base(context.request_id, context.id_time_us is not None)
        assessments = []
        for i, prediction in enumerate(response["predictions"]):
            patient = patients[i] if patients is not None else None
            subject = (
                {"reference": patient.reference}
                if patient is not None
                else {"display": f"records instance {i}"}
            )
            assessments.append(
                risk_assessment(
                    model=model.name,
                    version=model.number,
                    runtime=model.metadata.runtime,
                    fmap=fmap,
                    probability=positive_probability(model, fmap, prediction),
                    subject=subject,
                    basis=patient.basis if patient is not None else [],
                    rationale=reasons[i],
                    request_id=context.request_id,
                    index=i,
                    threshold=threshold,
                    fhir_id=fhir_id,
                )
            )
        bundle = collection(assessments, fhir_id)
        return 200, orjson.dumps(bundle), FHIR_JSON
    except MedserveError as exc:
        if not (fhir_in or fhir_out):
            raise
        return status_for(exc), orjson.dumps(outcome_for_error(exc, patients)), FHIR_JSON


def _decode(raw: bytes, fhir_in: bool) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        message = f"malformed JSON body: {exc.msg} at position {exc.pos}"
        if fhir_in:
            raise FhirInputError([Problem("structure", message, "Bundle")]) from exc
        raise InvalidRequestError(message) from exc


def media_handlers() -> dict[tuple[str, bytes], MediaHandler]:
    return {("records", FHIR_JSON): fhir_handler}
